import json
import multiprocessing
import os

import pytest

import envs
import envs.textworld as tw
from envs.textworld import GameCache, TextWorldEnv, game_seed, seeds, split_of

from tests.conftest import SESSION_GAMES

UNKNOWN_VERB = "That's not a verb I recognise."


@pytest.mark.parametrize("preset,index", SESSION_GAMES)
def test_walkthrough_wins_with_intermediate_rewards(tw_cache, preset, index):
    env = envs.make(f"textworld/{preset}", cache_dir=tw_cache)
    obs, info = env.reset(seed=index)
    assert info["task"] and info["walkthrough"] and info["max_steps"] == tw.PRESETS[preset].max_steps
    assert "$$" not in obs and not any(line.startswith(">") for line in obs.split("\n"))
    total = 0.0
    for i, command in enumerate(info["walkthrough"]):
        assert command.lower() in {c.lower() for c in info["admissible_actions"]}, command
        obs, reward, terminated, truncated, info = env.step(command)
        total += reward
        assert not info["invalid_action"]
        assert terminated == (i == len(info["walkthrough"]) - 1)
    assert info["won"] and not info["lost"] and not truncated
    assert total == info["score"] == info["max_score"] >= 1
    assert info["intermediate_reward"] == 1
    assert "*** The End ***" in obs and "RESTART" not in obs


@pytest.mark.parametrize("preset", ["coin-easy", "cooking-easy"])
def test_every_admissible_command_executes(tw_cache, preset):
    env = TextWorldEnv(preset, cache_dir=tw_cache)
    _, info = env.reset(seed=0)
    for command in info["admissible_actions"]:
        env.reset(seed=0)
        obs, _, _, _, after = env.step(command)
        assert not after["invalid_action"], command
        assert obs and obs != UNKNOWN_VERB and "You can't see any such thing" not in obs, (command, obs)


def test_same_seed_same_game_and_cache_key(tw_cache, tmp_path):
    fresh = GameCache(tmp_path).get("coin-easy", 0)
    cached = GameCache(tw_cache).get("coin-easy", 0)
    assert not fresh.from_cache and cached.from_cache
    assert json.loads((fresh.directory / "game.json").read_text()) == json.loads((cached.directory / "game.json").read_text())
    for key in ("walkthrough", "objective", "max_score", "rooms"):
        assert fresh.meta[key] == cached.meta[key]
    other = GameCache(tw_cache).get("coin-easy", 1)
    assert other.meta["objective"] != cached.meta["objective"] or other.meta["walkthrough"] != cached.meta["walkthrough"]
    parts = cached.directory.relative_to(tw_cache).parts
    assert parts[0] == f"textworld-{tw.TEXTWORLD_VERSION}" and parts[1].startswith("coin-easy-") and parts[2] == "0"


@pytest.mark.slow
def test_missing_games_are_generated_in_parallel_processes_and_equal_sequential_ones(tw_cache, tmp_path):
    cache = GameCache(tmp_path)
    assert cache.ensure("coin-easy", [0, 1, 0], workers=2) == 2   # duplicates generated once
    assert cache.ensure("coin-easy", [0, 1], workers=2) == 0      # nothing left to do
    def game(cached) -> dict:
        data = json.loads((cached.directory / "game.json").read_text())
        # textworld serialises a set here: its order follows each process's string hashing, the game does not
        data["grammar"]["names_to_exclude"] = sorted(data["grammar"]["names_to_exclude"], key=str)
        return data

    for seed in (0, 1):
        parallel, sequential = cache.get("coin-easy", seed), GameCache(tw_cache).get("coin-easy", seed)
        assert parallel.from_cache and game(parallel) == game(sequential)
        assert parallel.meta["walkthrough"] == sequential.meta["walkthrough"]
    assert not list(cache.game_dir("coin-easy", 0).parent.glob("*.tmp"))   # no half-written game left behind


def test_cache_hit_skips_generation(tw_cache, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("a cached game was generated again")

    monkeypatch.setattr(tw, "generate_game", no_generation)
    before = {p: p.stat().st_mtime_ns for p in (tw_cache).rglob("*") if p.is_file()}
    env = TextWorldEnv("coin-easy", cache_dir=tw_cache)
    _, info = env.reset(seed=1)
    assert env.game.from_cache and info["game_seed"] == 1
    assert before == {p: p.stat().st_mtime_ns for p in (tw_cache).rglob("*") if p.is_file()}


def _generate_in(directory: str) -> bool:
    return GameCache(directory).get("custom-easy", 5).from_cache


@pytest.mark.slow
def test_concurrent_generation_of_one_game_is_safe(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_generate_in, [str(tmp_path)] * 2)
    game_dir = GameCache(tmp_path).game_dir("custom-easy", 5)
    assert sorted(os.listdir(game_dir.parent)) == ["5"]  # no temporary directory left behind
    assert {"game.json", "game.z8", "meta.json"} <= set(os.listdir(game_dir))
    env = TextWorldEnv("custom-easy", cache_dir=tmp_path)
    _, info = env.reset(seed=5)
    for command in info["walkthrough"]:
        *_, info = env.step(command)
    assert info["won"]


def test_splits_are_disjoint_and_documented():
    train, validation, test = (set(seeds("coin-easy", split, 1000)) for split in tw.SPLITS)
    assert not (train & validation or train & test or validation & test)
    assert split_of(game_seed("test", 7)) == "test" and game_seed("validation", 0) == tw.SPLIT_SIZE
    with pytest.raises(ValueError, match="unknown split"):
        seeds("coin-easy", "dev", 3)
    with pytest.raises(ValueError, match="coin-easy"):
        TextWorldEnv("coin-impossible")


def test_bad_commands_never_raise_and_get_the_games_answer(tw_cache):
    env = TextWorldEnv("coin-easy", cache_dir=tw_cache)
    _, info = env.reset(seed=0)
    walkthrough = info["walkthrough"]
    for command in ["quit", "restart", "go east. restore", "tw-trace-actions", "xyzzy plugh", "", "\x00\x01",
                    "héllo wörld", "go north\ntake coin", "x" * 5000]:
        obs, reward, terminated, truncated, info = env.step(command)
        assert info["invalid_action"] and reward == 0 and not terminated, command
        assert obs, command
    assert env.step("quit")[0] == UNKNOWN_VERB
    assert env.step("")[0] == "I beg your pardon?"
    # the game is still in step with its tracker: the walkthrough wins from here
    for command in walkthrough:
        *_, info = env.step(command)
    assert info["won"]


def test_truncation_and_stepping_after_the_end(tw_cache):
    env = TextWorldEnv("coin-easy", cache_dir=tw_cache, max_steps=2)
    env.reset(seed=0)
    assert env.step("look")[3] is False
    obs, reward, terminated, truncated, info = env.step("look")
    assert truncated and not terminated and info["steps"] == 2
    assert env.step(info["walkthrough"][0]) == (obs, 0.0, False, True, info)


def test_batch_steps_only_running_episodes(tw_cache):
    batch = envs.make_batch("textworld/coin-easy", 2, cache_dir=tw_cache)
    observations, infos = batch.reset(seeds=[0, 1])
    plans = [list(info["walkthrough"]) for info in infos]
    assert len(observations) == 2 and plans[0] != plans[1]
    finished_at, last = {}, {}
    for step in range(max(map(len, plans))):
        actions = [plan[step] if step < len(plan) else None for plan in plans]
        observations, rewards, terminated, truncated, infos = batch.step(actions)
        for i, done in enumerate(terminated):
            if done and i not in finished_at:
                finished_at[i], last[i] = step, observations[i]
            if i in finished_at and step > finished_at[i]:
                assert rewards[i] == 0.0 and terminated[i] and observations[i] == last[i]
    assert all(info["won"] for info in infos) and batch.running == []
    with pytest.raises(ValueError, match="2 environments"):
        batch.step(["look"])
    batch.close()
