"""`bwarea evaluate`: real agents on real environments, numbers checked against independent recomputation,
and resumption after a real SIGKILL giving the identical report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bwarea
import envs
from cli.evaluate import main, parse_config
from envs.crafter import crafter_score, success_rates
from envs.textworld import TEXTWORLD_VERSION, GameCache, game_seed
from evaluation.config import EPISODES_FILE, EvaluationError
from evaluation.plan import Unit, expand_suite
from evaluation.records import append_line, play_batch, read_episodes, repair_torn_line
from evaluation.report import summarize
from evaluation.run import evaluate

REPO = Path(__file__).resolve().parents[2]


def save_tiny_bwarea(directory: Path) -> Path:
    """An untrained BWArea model (d 32, 2 layers) + byte-level tokenizer in save_pretrained layout."""
    tokenizer = bwarea.train_tokenizer(["You see a tree. > go west", "So the answer is (A).",
                                        "Objective: take the coin. > take coin"] * 4, vocab_size=300)
    config = bwarea.BWAreaConfig.preset(
        "tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64, world_layers=2, inverse_layers=1,
        policy_layers=2, code_dim=16, max_position_embeddings=2048)
    torch.manual_seed(0)
    bwarea.BWAreaModel(config).save_pretrained(directory, tokenizer=tokenizer)
    return directory


@pytest.fixture(scope="session")
def tiny_bwarea_dir(tmp_path_factory) -> Path:
    return save_tiny_bwarea(tmp_path_factory.mktemp("tiny_bwarea"))


def _records(out: Path) -> list[dict]:
    return read_episodes(out / EPISODES_FILE)


def test_walkthrough_agent_wins_every_textworld_game(tw_cache, tmp_path):
    out = tmp_path / "walkthrough"
    summary = evaluate("walkthrough", ["textworld/coin-easy"], episodes=2, seeds=[0], out_dir=out, split="train",
                       textworld_cache_dir=str(tw_cache), progress=False)
    metrics = summary["environments"]["textworld/coin-easy"]["metrics"]
    assert metrics["textworld_normalised_score"] == {"mean": 100.0, "stderr": 0.0, "n": 2, "unit": "%"}
    assert metrics["textworld_success_rate"]["mean"] == 100.0
    records = _records(out)
    assert [(r["episode"], r["won"]) for r in records] == [(0, True), (1, True)]
    for record in records:
        walkthrough = GameCache(tw_cache).get("coin-easy", game_seed("train", record["episode"])).meta["walkthrough"]
        assert [step["action"] for step in record["trajectory"]] == walkthrough
        assert len(record["traces"]) == len(walkthrough) and record["batch"] == 0
    assert summary["complete"] and summary["settings"]["agent"]["type"] == "walkthrough"
    report = (out / "report.md").read_text()
    assert "| textworld/coin-easy | 2 | 100.0 ± 0.0 | 100.0 ± 0.0 |" in report
    assert f"textworld {TEXTWORLD_VERSION}" in report and "torch" in summary["settings"]["versions"]


def test_random_agent_on_textworld_matches_its_recorded_episodes(tw_cache, tmp_path):
    out = tmp_path / "random"
    summary = evaluate("random", ["textworld/coin-easy"], episodes=2, seeds=[0, 1], out_dir=out, split="train",
                       max_steps=6, batch_size=2, textworld_cache_dir=str(tw_cache), progress=False, plots=False)
    records = sorted(_records(out), key=lambda r: (r["seed"], r["episode"]))   # in the order they finished
    assert [(r["seed"], r["episode"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    normalised = [100.0 * r["score"] / r["max_score"] for r in records]
    metric = summary["environments"]["textworld/coin-easy"]["metrics"]["textworld_normalised_score"]
    assert metric["mean"] == pytest.approx(sum(normalised) / 4) and metric["n"] == 4
    # the trajectory is what was played: replaying its actions gives its rewards and final score
    env = envs.make("textworld/coin-easy", split="train", cache_dir=tw_cache, max_steps=6)
    for record in records:
        env.reset(seed=record["env_seed"])
        rewards = [env.step(step["action"])[1] for step in record["trajectory"]]
        assert rewards == [step["reward"] for step in record["trajectory"]]
        assert record["steps"] <= 6 and (record["won"] or record["truncated"])
    env.close()
    # the two evaluation seeds play the same games with differently seeded agents
    by_seed = {seed: [[s["action"] for s in r["trajectory"]] for r in records if r["seed"] == seed] for seed in (0, 1)}
    assert [r["env_seed"] for r in records if r["seed"] == 0] == [r["env_seed"] for r in records if r["seed"] == 1]
    assert by_seed[0] != by_seed[1]
    assert all(r["agent_stats"]["steps"] == r["steps"] for r in records)


def test_random_agent_on_crafter_scores_like_the_crafter_definition(tmp_path):
    out = tmp_path / "crafter"
    summary = evaluate("random", ["crafter"], episodes=3, seeds=[0], out_dir=out, max_steps=60, batch_size=2,
                       progress=False)
    records = _records(out)
    assert [r["env_seed"] for r in records] == [2_000_000, 2_000_001, 2_000_002]     # test-split worlds
    assert [r["batch"] for r in records] == [0, 0, 1]
    entry = summary["environments"]["crafter"]
    expected = crafter_score(success_rates([r["achievements"] for r in records]))   # envs' own implementation
    assert entry["metrics"]["crafter_score"]["mean"] == pytest.approx(expected)
    assert entry["metrics"]["crafter_reward"]["mean"] == pytest.approx(sum(r["return"] for r in records) / 3)
    for record in records:
        assert record["steps"] == len(record["trajectory"]) == 60
        unlocked = {a for step in record["trajectory"] for a in step.get("new_achievements", [])}
        assert unlocked == set(record["achievements"])
    # Crafter is deterministic: the recorded actions replay to the same achievements
    env = envs.make("crafter", max_steps=60)
    env.reset(seed=records[2]["env_seed"])
    for step in records[2]["trajectory"]:
        *_, info = env.step(step["action"])
    assert info["achievements"] == records[2]["achievements"]
    assert (out / "plots" / "crafter_achievements.png").is_file()
    assert "crafter_score (%)" in (out / "report.md").read_text()


def test_bbh_accuracy_per_task_and_macro_with_a_seeded_agent(bbh_dir, tmp_path):
    tasks = ["bbh/navigate", "bbh/boolean_expressions"]
    kwargs = dict(episodes=5, seeds=[3], bbh_data_dir=str(bbh_dir), progress=False, plots=False)
    first = evaluate("random", tasks, out_dir=tmp_path / "a", **kwargs)
    second = evaluate("random", tasks, out_dir=tmp_path / "b", **kwargs)
    assert first == second                                   # deterministic per (seed, environment, batch)
    records = _records(tmp_path / "a")
    accuracy = {}
    for task in tasks:
        env = envs.make(task, data_dir=bbh_dir)
        correct = []
        for record in (r for r in records if r["env"] == task):
            env.reset(seed=record["env_seed"])
            correct.append(env.step(record["trajectory"][0]["action"])[1] == 1.0)
            assert record["correct"] == correct[-1] and record["target"] is not None
        accuracy[task] = 100.0 * sum(correct) / len(correct)
        assert first["environments"][task]["metrics"]["bbh_accuracy"]["mean"] == pytest.approx(accuracy[task])
    macro = first["aggregates"]["bbh_macro_accuracy"]
    assert macro["mean"] == pytest.approx(sum(accuracy.values()) / 2) and macro["tasks"] == 2 and macro["n"] == 10
    assert "**bbh_macro_accuracy** (2 tasks)" in (tmp_path / "a" / "report.md").read_text()


def test_own_model_agent_records_latent_actions_and_settings(tiny_bwarea_dir, bbh_dir, tmp_path, capsys):
    agent = {"backend": {"type": "bwarea", "model": str(tiny_bwarea_dir)},
             "agent": {"type": "direct", "style": "observation", "answer_format": "text", "max_tokens": 4,
                       "temperature": 0.0, "fallback_action": ""}}
    out = tmp_path / "own"
    summary = evaluate(agent, ["bbh/navigate"], episodes=2, seeds=[0], out_dir=out, bbh_data_dir=str(bbh_dir),
                       traces="compact")
    assert f"the agent's language model: bwarea:{tiny_bwarea_dir} on cpu (float32)" in capsys.readouterr().err
    records = _records(out)
    nodes = [node for r in records for trace in r["traces"] for node in trace["nodes"]]
    assert nodes and all("request" not in node for node in nodes)          # compact traces keep no prompts
    tokens = sum(len(node["metadata"]["actions"]) for node in nodes)
    assert tokens > 0 and sum(summary["latent_actions"].values()) == tokens
    assert summary["environments"]["bbh/navigate"]["agent"]["tokens_out"] == tokens
    settings = summary["settings"]["agent"]
    assert settings["backend"] == "bwarea" and settings["temperature"] == 0.0 and settings["max_tokens"] == 4
    assert len(settings["model_files"]["model.safetensors"]["sha256"]) == 64
    assert (out / "plots" / "latent_actions.png").is_file()


def test_dag_settings_carry_the_dag_name_and_hash(tiny_bwarea_dir, tw_cache, tmp_path):
    dag = {"name": "tiny", "nodes": [{"id": "look", "question": "What is here?"},
                                     {"id": "choose", "question": "Pick one of: {actions}.", "parents": ["look"]}]}
    agent = {"backend": {"type": "bwarea", "model": str(tiny_bwarea_dir)},
             "agent": {"type": "dag", "dag": dag, "max_tokens": 3, "fallback_action": "look"}}
    summary = evaluate(agent, ["textworld/coin-easy"], episodes=1, seeds=[0], out_dir=tmp_path / "dag", split="train",
                       max_steps=2, textworld_cache_dir=str(tw_cache), progress=False, plots=False)
    described = summary["settings"]["agent"]["dag"]
    assert described["name"] == "tiny" and described["nodes"] == 2 and described["edges"] == 1
    assert len(described["sha256"]) == 64
    record = _records(tmp_path / "dag")[0]
    assert [node["node"] for node in record["traces"][0]["nodes"]] == ["look", "choose"]
    assert "DAG tiny (sha256" in (tmp_path / "dag" / "report.md").read_text()


def test_resume_after_sigkill_gives_the_identical_report(tmp_path):
    options = ["--agent", "random", "--suite", "crafter", "--episodes", "6", "--seeds", "0", "--max_steps", "400",
               "--batch_size", "1", "--progress", "false", "--plots", "false"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "evaluate", *options, "--out", str(killed)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = killed / EPISODES_FILE
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and log.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    finished = log.read_bytes().count(b"\n")
    assert 1 <= finished < 6, "the kill must land in the middle of the evaluation"
    with log.open("ab") as handle:                     # what a kill in the middle of a write leaves behind
        handle.write(b'{"env": "crafter", "family": "crafter", "seed": 0, "epis')

    assert main([*options, "--out", str(killed)]) == 0
    reference = tmp_path / "reference"
    assert main([*options, "--out", str(reference)]) == 0
    assert (killed / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()
    assert (killed / "report.md").read_bytes() == (reference / "report.md").read_bytes()
    records = _records(killed)
    assert sorted(r["episode"] for r in records) == list(range(6))
    assert len(log.read_bytes().splitlines()) == 6      # torn fragment cut, nothing appended twice
    invocations = (killed / "invocations.jsonl").read_text().splitlines()
    assert json.loads(invocations[-1])["episodes"] == 6 - finished
    # a finished evaluation re-run plays nothing and reports the same
    assert main([*options, "--out", str(killed)]) == 0
    assert (killed / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()


def test_a_resumed_sampled_evaluation_draws_what_an_uninterrupted_one_draws(tiny_bwarea_dir, bbh_dir, tmp_path):
    agent = {"backend": {"type": "bwarea", "model": str(tiny_bwarea_dir)},
             "agent": {"type": "direct", "style": "observation", "answer_format": "text", "max_tokens": 6,
                       "temperature": 1.0, "fallback_action": ""}}
    options = dict(episodes=4, seeds=[0], bbh_data_dir=str(bbh_dir), batch_size=1, progress=False, plots=False)
    reference = tmp_path / "reference"
    evaluate(agent, ["bbh/navigate"], out_dir=reference, **options)
    answers = [r["trajectory"][0]["action"] for r in _records(reference)]
    assert len(set(answers)) > 1, "sampling at temperature 1 should give different answers across episodes"

    resumed = tmp_path / "resumed"       # as if killed after the first two batches
    resumed.mkdir()
    lines = (reference / EPISODES_FILE).read_bytes().splitlines(keepends=True)
    (resumed / EPISODES_FILE).write_bytes(b"".join(lines[:2]))
    (resumed / "evaluation.json").write_bytes((reference / "evaluation.json").read_bytes())
    evaluate(agent, ["bbh/navigate"], out_dir=resumed, **options)
    assert [r["trajectory"][0]["action"] for r in _records(resumed)] == answers
    assert (resumed / "report.md").read_bytes() == (reference / "report.md").read_bytes()


def test_a_resume_with_other_settings_is_refused(tmp_path):
    evaluate("random", ["crafter"], episodes=1, seeds=[0], out_dir=tmp_path, max_steps=5, progress=False, plots=False)
    with pytest.raises(EvaluationError, match="other settings .*episodes_per_seed.*--overwrite true"):
        evaluate("random", ["crafter"], episodes=2, seeds=[0], out_dir=tmp_path, max_steps=5, progress=False)
    summary = evaluate("random", ["crafter"], episodes=2, seeds=[0], out_dir=tmp_path, max_steps=5, progress=False,
                       plots=False, overwrite=True)
    assert summary["environments"]["crafter"]["completed"] == 2 and len(_records(tmp_path)) == 2


def test_bad_settings_fail_with_one_clear_sentence(tmp_path, bbh_dir):
    with pytest.raises(EvaluationError, match="suite entry 'textworld/coin' names no environment"):
        evaluate("random", ["textworld/coin"], episodes=1, out_dir=tmp_path)
    with pytest.raises(EvaluationError, match="human agent cannot be evaluated"):
        evaluate("human", ["crafter"], episodes=1, out_dir=tmp_path)
    with pytest.raises(EvaluationError, match="split 'validation' does not exist for bbh/navigate"):
        evaluate("random", ["bbh/navigate"], episodes=1, out_dir=tmp_path, split="validation", bbh_data_dir=str(bbh_dir))
    with pytest.raises(ValueError, match="walkthrough agent needs"):
        evaluate("walkthrough", ["crafter"], episodes=1, out_dir=tmp_path / "w", max_steps=3, progress=False)
    with pytest.raises(TypeError, match="unknown option.*max_step"):
        evaluate("random", ["crafter"], episodes=1, out_dir=tmp_path, max_step=3)
    assert main(["--agent", "random", "--suite", "crafter", "--episodes", "0", "--out", str(tmp_path)]) == 2


def test_glob_patterns_expand_the_suite(bbh_dir, tmp_path):
    summary = evaluate("random", ["bbh/*_expressions", "bbh/navigate"], episodes=1, out_dir=tmp_path,
                       bbh_data_dir=str(bbh_dir), progress=False, plots=False)
    assert summary["settings"]["suite"] == ["bbh/boolean_expressions", "bbh/navigate"]


def test_torn_last_line_is_ignored_and_cut_a_damaged_middle_line_is_an_error(tmp_path):
    path = tmp_path / EPISODES_FILE
    append_line(path, {"env": "crafter", "seed": 0, "episode": 0})
    append_line(path, {"env": "crafter", "seed": 0, "episode": 1})
    with path.open("ab") as handle:
        handle.write(b'{"env": "cra')
    assert [r["episode"] for r in read_episodes(path)] == [0, 1]
    repair_torn_line(path)
    append_line(path, {"env": "crafter", "seed": 0, "episode": 2})
    assert [r["episode"] for r in read_episodes(path)] == [0, 1, 2]
    path.write_bytes(b'{"env": 1}\nnot json\n{"env": 2}\n')
    with pytest.raises(EvaluationError, match="line 2 is not valid JSON"):
        read_episodes(path)


def test_an_agent_crash_is_recorded_per_episode_and_left_out_of_the_metrics():
    import agents

    class CrashingAgent(agents.RandomAgent):
        """A real random agent that raises on its third decision (fault injection)."""

        def _decide(self, traces, slots, infos):
            if self.stats.steps >= 4:
                raise RuntimeError("backend exploded")
            return super()._decide(traces, slots, infos)

    environments = [envs.make("crafter", max_steps=50) for _ in range(2)]
    unit = Unit("crafter", 0, 0, [0, 1], [2_000_000, 2_000_001])
    records: list[dict] = []
    play_batch(CrashingAgent(), environments, unit, "full", records.append)
    assert len(records) == 2
    assert all(r["error"].startswith("RuntimeError: backend exploded (test_evaluate.py:") for r in records)
    assert all(r["steps"] == 2 for r in records)
    settings = {"suite": ["crafter"], "seeds": [0], "environments": {"crafter": {"episodes": 2}}}
    summary = summarize(records, settings)
    entry = summary["environments"]["crafter"]
    assert (entry["completed"], entry["errored"], entry["metrics"]) == (0, 2, {})
    assert not summary["complete"] and "backend exploded" in entry["errors"][0]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "evaluate").glob("*.yaml")), ids=lambda p: p.stem)
def test_ready_suites_are_valid(path):
    import agents

    config = parse_config(["--config", str(path)])
    assert expand_suite(config.suite) and config.split == "test"
    assert agents.load_config(config.agent, config.agent_overrides)["agent"]["type"]
    overridden = parse_config(["--config", str(path), "--agent", "walkthrough", "--seeds", "1", "2"])
    assert (overridden.agent, overridden.seeds, overridden.suite) == ("walkthrough", [1, 2], config.suite)
