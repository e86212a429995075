from __future__ import annotations

import pytest

import configs
from agents.dag import DAGError, DAGInput, QuestionDAG, node_request, run_dag

CONFIG_DIR = configs.directory("agents")

SPRING = CONFIG_DIR / "spring.yaml"


def dag(*nodes) -> QuestionDAG:
    return QuestionDAG.from_dict({"nodes": [dict(zip(("id", "question", "parents"), node)) for node in nodes]})


def test_spring_dag_shape_and_generations():
    spring = QuestionDAG.load(SPRING)
    assert len(spring.nodes) == 9 and spring.num_edges == 11 and spring.sink == "choose"
    assert spring.generations == [["objects", "last_action"], ["object_reqs", "last_success"], ["subtasks"],
                                  ["top_subtask"], ["top_actions"], ["action_reqs"], ["choose"]]
    assert spring.parents("choose") == ("last_action", "last_success", "top_actions", "action_reqs")
    assert spring.parents("subtasks") == ("objects", "object_reqs")


def test_declared_parent_order_is_kept():
    d = dag(("b", "B?"), ("a", "A?"), ("choose", "Which?", ["a", "b"]))   # parents listed against node order
    assert d.parents("choose") == ("a", "b")
    assert d.generations == [["b", "a"], ["choose"]]
    request = node_request(d, "choose", DAGInput("sys", "", "obs"), {"a": "yes", "b": "no"}, 8, 0.0)
    user = request.messages[1].content
    assert user.index("Q: A?\nA: yes") < user.index("Q: B?\nA: no")


@pytest.mark.parametrize("nodes, message", [
    ([("a", "A?", ["b"]), ("b", "B?", ["a"])], "cycle"),
    ([("a", "A?"), ("b", "B?")], "exactly one sink"),
    ([("a", "A?", ["ghost"])], "unknown parent 'ghost'"),
    ([("a", "A?"), ("a", "again?")], "declared twice"),
    ([("a", "A?", ["a"])], "more than once or itself"),
    ([("a", "Pick from {moves}")], "unknown placeholder"),
    ([], "at least one node"),
])
def test_invalid_dags_are_rejected_with_a_reason(nodes, message):
    with pytest.raises(DAGError, match=message):
        dag(*nodes)


def test_declaration_errors_name_the_problem():
    with pytest.raises(DAGError, match="parents must be a list"):
        QuestionDAG.from_dict({"nodes": [{"id": "a", "question": "A?", "parents": "b"}]})
    with pytest.raises(DAGError, match="unknown key"):
        QuestionDAG.from_dict({"nodes": [{"id": "a", "question": "A?", "depends": ["b"]}]})


def test_node_prompt_has_system_context_observations_parents_and_question():
    spring = QuestionDAG.load(SPRING)
    state = DAGInput(system="You play Crafter.", context="Trees give wood.", observations="You see a tree.",
                     variables={"actions": "noop, do", "task": "survive"})
    answers = {name: f"answer of {name}" for name in spring.nodes}
    request = node_request(spring, "choose", state, answers, max_tokens=32, temperature=0.0, stop=("\nQ:",))
    system, user = (m.content for m in request.messages)
    assert system == "You play Crafter.\n\nBackground knowledge:\nTrees give wood."
    assert user.startswith("Recent observations:\nYou see a tree.\n\nAnswers so far:\n")
    assert [line for line in user.split("\n") if line.startswith("A: ")] == [
        f"A: answer of {p}" for p in ("last_action", "last_success", "top_actions", "action_reqs")]
    assert "answer of objects" not in user                   # only direct parents
    assert user.endswith("using one of: noop, do.")          # {actions} filled
    assert request.max_tokens == 48 and request.stop == ("\nQ:",)   # the node's own budget wins
    roots = node_request(spring, "objects", state, answers, 32, 0.0)
    assert "Answers so far" not in roots.messages[1].content


def test_batched_execution_sends_each_generation_of_all_environments_in_one_call(tiny_backend):
    spring = QuestionDAG.load(SPRING)
    states = [DAGInput("You play.", "", f"You see tree number {i}.", {"actions": "noop, do"}) for i in range(3)]
    before = tiny_backend.rounds
    batched = run_dag(spring, tiny_backend, states, max_tokens=4, mode="batched")
    assert tiny_backend.rounds - before == 7
    assert all(result.rounds == 7 and len(result.traces) == 9 for result in batched)
    per_round = [sum(t.round == r for result in batched for t in result.traces) for r in range(7)]
    assert per_round == [6, 6, 3, 3, 3, 3, 3]                # every node of a generation, for all 3 environments
    assert [t.node for t in batched[0].traces] == spring.order

    before = tiny_backend.rounds
    sequential = run_dag(spring, tiny_backend, states, max_tokens=4, mode="sequential")
    assert tiny_backend.rounds - before == 27 and sequential[0].rounds == 27
    # greedy decoding: left padding in a batch must not change any answer
    assert [r.answers for r in sequential] == [r.answers for r in batched]


def test_unknown_execution_mode_is_rejected(tiny_backend):
    with pytest.raises(ValueError, match="batched, sequential"):
        run_dag(dag(("a", "A?")), tiny_backend, [DAGInput("s", "", "o")], mode="parallel")
