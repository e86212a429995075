"""The viewer in a real browser: Debian's headless chromium driven by selenium through /usr/bin/chromedriver,
against a server this module starts on 127.0.0.1. A screenshot of every page goes to the test's tmp dir.

Needs `chromium` and `chromium-driver` (`make install` installs them). Without them these tests fail; set
BWAREA_SKIP_BROWSER=1 to skip them on purpose. BWAREA_SCREENSHOTS=docs/img writes the screenshots there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.viewer.conftest import ACTIONS, settings, textworld_record, write_evaluation

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
A = "runs/evaluate/model_a"
WAIT_S = 15


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs_root, tw_cache, tmp_path_factory):
    import uvicorn

    from viewer import create_app

    play_out = tmp_path_factory.mktemp("played")
    app = create_app([runs_root], play_out=play_out, play_options={"textworld_cache_dir": str(tw_cache)})
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert time.monotonic() < deadline, "the viewer did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", play_out
    server.should_exit = True
    thread.join(WAIT_S)


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("BWAREA_SKIP_BROWSER") == "1":
        pytest.skip("BWAREA_SKIP_BROWSER=1: browser tests skipped on purpose")
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: `make install` installs Debian's chromium and chromium-driver "
                    "(or set BWAREA_SKIP_BROWSER=1 to skip the browser tests).")
    os.environ["SE_OFFLINE"] = "true"     # selenium must never download a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str):
    """condition(driver) once truthy; an element replaced while being read (the page redraws) is tried again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda d: condition(d), message=f"waited for {what}")


def find(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def screenshot(driver, tmp_path_factory, name: str) -> Path:
    """<tmp>/screenshots/<name>.png, or $BWAREA_SCREENSHOTS/<name>.png (how docs/img/ was made)."""
    folder = os.environ.get("BWAREA_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "screenshots"
    path = Path(folder) / f"viewer-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    return path


def test_runs_list_shows_the_runs_and_filters_them(server, browser, tmp_path_factory):
    base, _ = server
    browser.get(base + "/")
    rows = wait_for(browser, lambda d: find(d, "#runs tbody tr[data-run]"), "the runs table")
    ids = {row.get_attribute("data-run") for row in rows}
    assert {A, "runs/evaluate/model_b", "runs/train/finetune"} <= ids
    screenshot(browser, tmp_path_factory, "runs")
    find(browser, "#filter-agent")[0].send_keys("own_model")
    wait_for(browser, lambda d: [r.get_attribute("data-run") for r in find(d, "#runs tbody tr")] == [A], "the filter")


def test_a_running_evaluation_grows_on_its_page(server, browser, runs_root, tmp_path_factory):
    """Live watch: the run page re-reads the episode index; an episode appended by the evaluation appears."""
    run_dir = write_evaluation(runs_root / "evaluate" / "live", settings(["textworld/coin-easy"], 3, [0]),
                               [textworld_record(0, 0, 1)])
    base, _ = server
    browser.get(f"{base}/run?run=runs/evaluate/live")
    wait_for(browser, lambda d: len(find(d, "#episodes tbody tr")) == 1, "one episode")
    with (run_dir / "episodes.jsonl").open("a") as handle:
        handle.write(json.dumps(textworld_record(0, 1, 0)) + "\n")
    wait_for(browser, lambda d: len(find(d, "#episodes tbody tr")) == 2, "the appended episode")
    screenshot(browser, tmp_path_factory, "run")


def test_replay_steps_with_the_keyboard_and_the_crafter_frame_changes(server, browser, tmp_path_factory):
    from selenium.webdriver.common.keys import Keys

    base, _ = server
    browser.get(f"{base}/replay?run={A}&episode=2")
    frame = wait_for(browser, lambda d: find(d, "img[data-role=frame]"), "the frame")[0]
    wait_for(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", frame), "frame 0")
    first = frame.screenshot_as_png
    body = find(browser, "body")[0]
    for _ in range(6):
        body.send_keys(Keys.ARROW_RIGHT)
    wait_for(browser, lambda d: find(d, "[data-role=step-label]")[0].text == "step 6 / 120", "step 6")
    assert frame.get_attribute("src").endswith("step=6")
    assert find(browser, "[data-role=achievements]")[0].text == "none"
    body.send_keys(Keys.END)
    wait_for(browser, lambda d: find(d, "[data-role=step-label]")[0].text == "step 120 / 120", "the last step")
    assert frame.get_attribute("src").endswith("step=120")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", frame), "frame 120")
    assert frame.screenshot_as_png != first
    assert sorted(find(browser, "[data-role=achievements]")[0].text.split(", ")) == ["collect_sapling", "place_plant", "wake_up"]
    assert not find(browser, "[data-role=replay-diverged]")       # the replay agrees with the recorded game
    screenshot(browser, tmp_path_factory, "replay-crafter")


def test_tokens_are_coloured_by_their_recorded_latent_action(server, browser, tmp_path_factory):
    from selenium.webdriver.common.action_chains import ActionChains

    base, _ = server
    browser.get(f"{base}/replay?run={A}&episode=1")      # a DAG agent: two questions in round 0, the answer in round 1
    tokens = wait_for(browser, lambda d: find(d, "[data-role=tokens] .token"), "the tokens")
    assert [int(t.get_attribute("data-action")) for t in tokens] == ACTIONS
    colours = {t.value_of_css_property("background-color") for t in tokens}
    assert len(colours) == 3
    rounds = find(browser, ".dag-round")
    assert [len(r.find_elements("css selector", ".dag-node")) for r in rounds] == [2, 1]
    assert find(browser, ".dag-node[data-node=answer] .parents")[0].text == "← where, goal"
    ActionChains(browser).move_to_element(tokens[1]).perform()
    tip = wait_for(browser, lambda d: d.find_element("id", "token-tip").is_displayed() and d.find_element("id", "token-tip"), "the tooltip")
    lines = tip.text.split("\n")
    assert lines[0] == "action 3 · p = 28.7%" and lines[2].split() == ["5", "40.0%"]
    assert lines[3].split()[0] == "3" and lines[3].endswith("◀ chosen") and len(lines) == 7
    screenshot(browser, tmp_path_factory, "replay-tokens")


def test_compare_shows_who_won_each_episode(server, browser, tmp_path_factory):
    base, _ = server
    browser.get(f"{base}/compare?a={A}&b=runs/evaluate/model_b")
    rows = wait_for(browser, lambda d: find(d, "#compare-table tbody tr"), "the compare table")
    assert [row.find_element("css selector", ".winner").text for row in rows] == ["A", "B"]
    wait_for(browser, lambda d: len(find(d, ".pane [data-role=step-label]")) == 2, "both replays")
    screenshot(browser, tmp_path_factory, "compare")


def test_a_textworld_game_is_won_in_the_browser_and_saved(server, browser, tmp_path_factory, tw_cache):
    import envs
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    base, play_out = server
    env = envs.make("textworld/coin-easy", split="train", cache_dir=str(tw_cache))
    walkthrough = env.reset(seed=0)[1]["walkthrough"]
    env.close()
    browser.get(base + "/play")
    wait_for(browser, lambda d: find(d, "#play-env option[value='textworld/coin-easy']"), "the environments")
    Select(find(browser, "#play-env")[0]).select_by_value("textworld/coin-easy")
    Select(find(browser, "#play-split")[0]).select_by_value("train")
    find(browser, "#play-start")[0].click()
    for number, command in enumerate(walkthrough, 1):
        box = wait_for(browser, lambda d: find(d, "#play-command"), "the command box")[0]
        if number == 1:
            assert command in [b.text for b in find(browser, "#play-admissible button")]
        box.send_keys(command, Keys.ENTER)
        if number < len(walkthrough):
            wait_for(browser, lambda d, n=number: f"step {n}/" in (find(d, "#play-status") or [None])[0].text, f"step {number}")
    saved = wait_for(browser, lambda d: find(d, "#play-saved"), "the saved notice")[0]
    assert "Game won" in saved.text
    screenshot(browser, tmp_path_factory, "play")
    [episode] = list(play_out.glob("*/episode.json"))
    record = json.loads(episode.read_text())
    assert record["won"] and record["player"] == "human" and record["ended"] == "won"
    assert [step["action"] for step in record["trajectory"]] == walkthrough
    # saved like `bwarea play`, it is a run of its own now, and replays
    browser.get(f"{base}/replay?run={play_out.name}/{episode.parent.name}&episode=0")
    wait_for(browser, lambda d: find(d, "[data-role=step-label]") and find(d, "[data-role=step-label]")[0].text == f"step 0 / {len(walkthrough)}", "the replay")


def test_crafter_is_played_with_the_keyboard(server, browser):
    from selenium.webdriver.support.ui import Select

    base, _ = server
    browser.get(base + "/play")
    wait_for(browser, lambda d: find(d, "#play-env option[value='crafter']"), "the environments")
    Select(find(browser, "#play-env")[0]).select_by_value("crafter")
    find(browser, "#play-start")[0].click()
    frame = wait_for(browser, lambda d: find(d, "#play-frame"), "the frame")[0]
    assert frame.get_attribute("src").endswith("step=0")
    find(browser, "body")[0].send_keys("a")           # a: move west
    wait_for(browser, lambda d: find(d, "#play-frame")[0].get_attribute("src").endswith("step=1"), "step 1")
    assert "[move" in find(browser, "#play-status")[0].text and "west" in find(browser, "#play-status")[0].text \
        or "move_left" in find(browser, "#play-status")[0].text


def test_training_curves_are_drawn(server, browser, tmp_path_factory):
    base, _ = server
    browser.get(f"{base}/curves?run=runs/train/finetune")
    charts = wait_for(browser, lambda d: find(d, "svg.chart"), "the charts")
    assert {c.get_attribute("data-metric") for c in charts} == {"finetune/reward/sampled", "finetune/kl"}
    screenshot(browser, tmp_path_factory, "curves")


def test_a_path_outside_the_runs_is_refused_on_the_page(server, browser):
    base, _ = server
    # the browser resolves "../" and "%2e%2e/" itself; "..%2f" reaches the server as a ".." segment
    browser.get(f"{base}/files/{A}/..%2f..%2f..%2f..%2fetc%2fpasswd")
    assert "'..' segment" in find(browser, "body")[0].text and "root:" not in browser.page_source
    browser.get(f"{base}/replay?run=..%2f..%2fetc&episode=0")
    error = wait_for(browser, lambda d: find(d, "#server-error"), "the error banner")[0]
    assert "no run '../../etc'" in error.text
    browser.get(f"{base}/replay?run=runs/evaluate/future&episode=0")
    error = wait_for(browser, lambda d: find(d, "#server-error"), "the error banner")[0]
    assert "bwarea-evaluation/9" in error.text
