"""The viewer's JSON API and run reading, without a browser (starlette's TestClient)."""

from __future__ import annotations

import io
import json
import random
import time

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from cli.view import main as view_main
from tests.viewer.conftest import (ACTIONS, TOP, TOP_PROBS, crafter_record, settings, textworld_record,
                                   with_made_up_achievements, write_evaluation)
from viewer import RunStore, create_app
from viewer.store import KNOWN_FORMATS

A, B = "runs/evaluate/model_a", "runs/evaluate/model_b"


@pytest.fixture(scope="module")
def client(runs_root, tmp_path_factory):
    return TestClient(create_app([runs_root], play_out=tmp_path_factory.mktemp("play")))


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_the_format_this_viewer_reads_is_the_one_evaluate_writes():
    from evaluation.config import FORMAT
    assert FORMAT in KNOWN_FORMATS


def test_runs_list_shows_every_run_with_settings_metrics_and_problems(client):
    rows = {row["id"]: row for row in client.get("/api/runs").json()}
    assert {A, B, "runs/evaluate/damaged", "runs/evaluate/future", "runs/train/finetune"} <= set(rows)
    assert rows[A]["kind"] == "evaluation" and rows[A]["agent"] == "own_model" and rows[A]["seeds"] == [0]
    assert (rows[A]["episodes"], rows[A]["planned"]) == (4, 4)
    assert rows[A]["metrics"]["textworld/coin-easy"]["textworld_success_rate"]["stderr"] == 50.0
    assert rows["runs/train/finetune"]["kind"] == "training"
    damaged = rows["runs/evaluate/damaged"]
    assert damaged["episodes"] == 2      # the good line and the bad one; the torn last line is left out
    assert any("unfinished line (40 bytes" in p for p in damaged["problems"])
    assert any("episode line 2: not valid JSON" in p for p in damaged["problems"])
    assert any("format 'bwarea-evaluation/9'" in p for p in rows["runs/evaluate/future"]["problems"])
    assert rows[A]["complete"] and not rows[A]["live"]       # its summary was written after its last episode
    assert rows["runs/evaluate/model_b"]["live"]             # just written, no summary yet
    assert client.get("/api/run", params={"run": A}).json()["plots"] == ["plots/crafter_achievements.png"]


def wait_for_check(client, query: dict) -> dict:
    """The background replay's check of an episode against its record, once it has gone through all of it."""
    deadline = time.monotonic() + 30
    while True:
        check = client.get("/api/replay-check", params=query).json()
        if check["checked"] == check["total"] or check["diverged_at"] is not None:
            return check
        assert time.monotonic() < deadline, check
        time.sleep(0.05)


def test_steps_come_page_by_page_with_return_achievements_and_traces(client, tmp_path):
    record = with_made_up_achievements(crafter_record(0, 0, 120, random.Random(0)))
    write_evaluation(tmp_path / "made_up", settings(["crafter"], 1, [0]), [record])
    local = TestClient(create_app([tmp_path], play_out=tmp_path / "played"))
    query = {"run": f"{tmp_path.name}/made_up", "episode": 0}
    episode = local.get("/api/episode", params=query).json()
    assert episode["frames"] and episode["outline"]["achievement_steps"] == [3, 6] and len(episode["outline"]["rewards"]) == 120
    assert "frames_warning" not in episode      # recorded with the installed crafter 1.8.3
    page = local.get("/api/steps", params={**query, "start": 2, "count": 5}).json()
    assert [s["step"] for s in page["steps"]] == [2, 3, 4, 5, 6] and page["total"] == 121
    # step k is the state after k actions: the reward of action 2 counts from step 3 on
    assert [s["return"] for s in page["steps"]] == [0.0, 1.0, 1.0, 1.0, 2.0]
    assert page["steps"][4]["achievements"] == ["collect_wood", "place_table"]
    last = local.get("/api/steps", params={**query, "start": 120, "count": 50}).json()["steps"]
    assert len(last) == 1 and last[0]["final"] and last[0]["observation"] == record["final_observation"]
    assert local.get("/api/steps", params={**query, "start": 122}).status_code == 404
    assert local.get("/api/steps", params={**query, "count": 5000}).status_code == 400
    # the world replayed from the seed and actions unlocked nothing at action 2: the frames are flagged
    assert wait_for_check(local, query)["diverged_at"] == 3
    tokens = client.get("/api/steps", params={"run": A, "episode": 0, "start": 0, "count": 1}).json()["steps"][0]
    meta = tokens["trace"]["nodes"][0]["metadata"]
    assert meta["actions"] == ACTIONS and meta["action_top"] == TOP and meta["action_top_probs"] == TOP_PROBS
    assert client.get("/api/episode", params={"run": A, "episode": 9}).status_code == 404


def test_crafter_frames_are_the_recorded_world_replayed_from_seed_and_actions(client):
    """Each frame equals the picture of a pixel-drawing CrafterEnv played with the same world seed and actions,
    also after jumping back (to a snapshot) and forward again."""
    from envs.crafter import CrafterEnv

    record = client.get("/api/steps", params={"run": A, "episode": 2, "start": 0, "count": 120}).json()["steps"]
    actions = [step["action"] for step in record[:120]]
    env = CrafterEnv(size=(288, 288), render_mode="rgb_array", max_steps=500)
    env.reset(seed=2_000_000)
    expected = {0: env.render().copy()}
    for k, action in enumerate(actions, 1):
        env.step(action)
        expected[k] = env.render().copy()
    for step in (0, 7, 120, 3, 60):
        response = client.get("/api/frame", params={"run": A, "episode": 2, "step": step})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert np.array_equal(png(response.content), expected[step]), step
    assert not np.array_equal(expected[0], expected[120])
    check = wait_for_check(client, {"run": A, "episode": 2})     # a record of a game really played agrees
    assert check == {"checked": 120, "total": 120, "diverged_at": None}
    assert client.get("/api/frame", params={"run": A, "episode": 2, "step": 121}).status_code == 404
    text_only = client.get("/api/frame", params={"run": A, "episode": 0, "step": 0})
    assert text_only.status_code == 404 and "text only" in text_only.json()["error"]


def test_drawing_a_night_frame_leaves_the_game_alone():
    """At night crafter draws noise from the world's random generator; drawing frames 160..200 (night) must not
    change what the world does next, so frame 200 is the same whether or not the frames before it were drawn."""
    from viewer.frames import CrafterReplay

    rng = random.Random(3)
    actions = [rng.choice(["move_left", "move_right", "move_up", "move_down", "do", "noop"]) for _ in range(200)]
    watched = CrafterReplay(2_000_007, actions, size=90)
    for step in range(160, 200, 8):
        watched.frame(step)
    assert watched.env.engine._world.daylight < 0.5     # it is night: the noise was drawn
    assert np.array_equal(watched.frame(200), CrafterReplay(2_000_007, actions, size=90).frame(200))


def test_gif_export_from_the_api_and_the_command_line(client, runs_root, tmp_path):
    response = client.get("/api/export", params={"run": A, "episode": 3, "start": 2, "stop": 6})
    assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(response.content))
    assert gif.n_frames == 5
    first = png(client.get("/api/frame", params={"run": A, "episode": 3, "step": 2}).content)
    assert np.abs(np.asarray(gif.convert("RGB")).astype(int) - first).mean() < 8   # GIF palette quantisation
    out = tmp_path / "episode.gif"
    assert view_main([str(runs_root / "evaluate" / "model_a"), "--export", str(out), "--episode", "3", "--stop", "4"]) == 0
    assert Image.open(out).n_frames == 5
    assert view_main([str(runs_root / "train" / "finetune"), "--export", str(out)]) == 2


def test_bad_input_gets_a_clear_message_and_an_http_error(client):
    assert client.get("/files/runs/evaluate/model_a/%2e%2e/%2e%2e/%2e%2e/etc/passwd").status_code == 403
    assert client.get("/files/runs/evaluate/model_a/evaluation.json").json()["format"] == "bwarea-evaluation/1"
    assert client.get("/files/runs/evaluate/model_a/missing.png").status_code == 404
    unknown = client.get("/api/run", params={"run": "runs/nope"})
    assert unknown.status_code == 404 and "no run 'runs/nope'" in unknown.json()["error"]
    future = client.get("/api/run", params={"run": "runs/evaluate/future"})
    assert future.status_code == 422 and "does not read" in future.json()["error"]
    page = client.get("/run", params={"run": "runs/evaluate/future"})
    assert page.status_code == 422 and 'id="server-error"' in page.text and "bwarea-evaluation/9" in page.text
    damaged = client.get("/api/steps", params={"run": "runs/evaluate/damaged", "episode": 1})
    assert damaged.status_code == 422 and "not valid JSON" in damaged.json()["error"]
    assert client.get("/api/steps", params={"run": A, "episode": "x"}).status_code == 400
    assert client.get("/replay", params={"run": A, "episode": 0}).status_code == 200


def test_compare_matches_episodes_and_names_the_winner(client):
    data = client.get("/api/compare", params={"a": A, "b": B}).json()
    assert [(row["env"], row["episode"], row["winner"]) for row in data["rows"]] == [
        ("textworld/coin-easy", 0, "a"), ("textworld/coin-easy", 1, "b")]
    assert data["wins"] == {"a": 1, "b": 1, "tie": 0} and data["unmatched"] == {"a": 2, "b": 0}


def test_live_watch_indexes_only_what_was_appended(tmp_path):
    run_dir = write_evaluation(tmp_path / "live", settings(["textworld/coin-easy"], 3, [0]), [textworld_record(0, 0, 1)])
    store = RunStore([tmp_path])
    run = store.get(f"{tmp_path.name}/live")   # ids start with the root folder's name
    assert len(run.episodes()) == 1
    line = json.dumps(textworld_record(0, 1, 0)) + "\n"
    with (run_dir / "episodes.jsonl").open("a") as handle:
        handle.write(line[:100])         # the evaluation is half-way through writing a line
    assert len(run.episodes()) == 1 and run.describe()["problems"]
    with (run_dir / "episodes.jsonl").open("a") as handle:
        handle.write(line[100:])
    assert [e.header["episode"] for e in run.episodes()] == [0, 1]
    assert run.record(1)["score"] == 0 and run.record(0)["score"] == 1 and not run.describe()["problems"]
    write_evaluation(tmp_path / "new", settings(["crafter"], 1, [0]), [crafter_record(0, 0, 8, random.Random(1))])
    assert f"{tmp_path.name}/new" in [r.id for r in store.runs()]       # a run started after the viewer shows up


def test_training_curves(client):
    data = client.get("/api/curves", params={"run": "runs/train/finetune"}).json()
    assert data["columns"]["finetune/reward/sampled"][:2] == [[1.0, 0.1], [2.0, 0.2]]
    assert len(data["columns"]["finetune/kl"]) == 10 and "epoch" not in data["columns"]
    assert client.get("/api/curves", params={"run": A}).status_code == 400


@pytest.mark.slow   # the first game loads the play stack (agents, torch): seconds on a busy box
def test_a_bbh_item_is_answered_in_the_browser_api_and_saved_like_bwarea_play(bbh_dir, tmp_path):
    client = TestClient(create_app([], play_out=tmp_path / "played", play_options={"bbh_data_dir": str(bbh_dir)}))
    state = client.post("/api/play", json={"env": "bbh/navigate", "seed": 0}).json()
    assert state["family"] == "bbh" and state["observation"] and state["frame"] is None
    state = client.post(f"/api/play/{state['id']}/act", json={"action": "(A)"}).json()
    assert state["ended"] in ("won", "lost", "over") and state["saved"].endswith("episode.json")
    record = json.loads(open(state["saved"]).read())
    assert record["env"] == "bbh/navigate" and record["player"] == "human" and record["trajectory"][0]["action"] == "(A)"
    assert client.post(f"/api/play/{state['id']}/act", json={"action": "(B)"}).status_code == 400   # the game is over
    assert client.post("/api/play", json={"env": "nowhere", "seed": 0}).status_code == 400
    assert client.get("/api/play/g999").status_code == 404
    runs = client.get("/api/runs").json()
    assert [row["kind"] for row in runs] == ["play"] and runs[0]["episodes"] == 1


def test_episode_headers_are_read_without_parsing_the_steps():
    from viewer.store import _header, read_header

    record = textworld_record(0, 1, 1, dag=True)
    record["traces"][0]["nodes"][0]["error"] = 'timeout after "error": 3'     # a node's own error, not the record's
    record["trajectory"][0]["observation"] = 'a sign says ", "trajectory": ' + '"'
    record = {**{k: v for k, v in record.items() if k not in ("latent_actions", "traces", "error")}, "faulted": True,
              "latent_actions": {}, "traces": record["traces"], "error": 'crashed: "error": x'}   # evaluate's key order
    line = json.dumps(record).encode()
    assert read_header(line) == _header(record) and read_header(line)["error"] == 'crashed: "error": x'
    assert read_header(line)["faulted"] is True and read_header(line)["score"] == 1
    reordered = {"trajectory": record["trajectory"], **{k: v for k, v in record.items() if k != "trajectory"}}
    assert read_header(json.dumps(reordered).encode()) == _header(record)     # another key order: parsed in full
    with pytest.raises(json.JSONDecodeError):
        read_header(line[:-10])


@pytest.mark.slow
def test_crafter_played_in_the_browser_api_with_an_agent_suggesting(tmp_path):
    client = TestClient(create_app([], play_out=tmp_path / "played"))
    state = client.post("/api/play", json={"env": "crafter", "seed": 2, "agent": "random"}).json()
    assert state["frame"].endswith("step=0") and state["suggestion"] in state["admissible"]
    frame = png(client.get(state["frame"]).content)
    suggested = state["suggestion"]
    state = client.post(f"/api/play/{state['id']}/act", json={"action": ""}).json()   # empty: take the suggestion
    state = client.post(f"/api/play/{state['id']}/act", json={"action": "move_left"}).json()
    assert state["steps"] == 2 and state["frame"].endswith("step=2") and not state["ended"]
    assert frame.shape == (288, 288, 3)
    state = client.post(f"/api/play/{state['id']}/quit").json()
    record = json.loads(open(state["saved"]).read())
    assert state["ended"] == "quit" and record["ended"] == "quit" and record["env_seed"] == 2_000_002
    assert [step["action"] for step in record["trajectory"]] == [suggested, "move_left"]
    assert record["trajectory"][0]["suggestion"] == suggested and record["agent"] == "random"
    # the saved game replays: its frames come from its seed and actions like an evaluation's
    [run] = client.get("/api/runs").json()
    assert run["kind"] == "play"
    replayed = png(client.get("/api/frame", params={"run": run["id"], "episode": 0, "step": 0}).content)
    assert np.array_equal(replayed, frame)


def test_bwarea_view_starts_fast_without_torch_and_serves_on_localhost(runs_root):
    """The command imports neither torch nor lightning at start-up, binds 127.0.0.1 and answers."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    code = "import sys, cli.view, viewer.app; print(sorted({'torch', 'lightning', 'crafter', 'textworld'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "view", str(runs_root), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=2) as response:
                    assert A in {row["id"] for row in json.load(response)}
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "bwarea view did not start"
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(10)
    assert view_main(["/no/such/runs"]) == 2


def test_mp4_export_holds_the_episode_frames(client, tmp_path):
    import imageio.v3 as iio

    response = client.get("/api/export", params={"run": A, "episode": 3, "start": 2, "stop": 6, "format": "mp4"})
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert response.content[4:8] == b"ftyp"                      # an MP4 container
    video = tmp_path / "episode.mp4"
    video.write_bytes(response.content)
    frames = iio.imread(video, plugin="FFMPEG")
    assert len(frames) == 5
    first = png(client.get("/api/frame", params={"run": A, "episode": 3, "step": 2}).content)
    assert frames[0].shape[-1] == 3 and np.abs(frames[0][: first.shape[0], : first.shape[1]].astype(int) - first).mean() < 12


def test_frames_of_a_run_recorded_with_another_crafter_carry_a_warning(tmp_path):
    config = settings(["crafter"], 1, [0])
    config["versions"]["crafter"] = "1.0.0"
    write_evaluation(tmp_path / "old", config, [crafter_record(0, 0, 8, random.Random(2))])
    client = TestClient(create_app([tmp_path], play_out=tmp_path / "played"))
    episode = client.get("/api/episode", params={"run": f"{tmp_path.name}/old", "episode": 0}).json()
    assert "recorded with crafter 1.0.0" in episode["frames_warning"]
