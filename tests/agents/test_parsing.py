from __future__ import annotations

import pytest

from envs.crafter import ACTIONS
from agents.parsing import final_segment, parse_action, parse_action_faithful

TEXTWORLD = ["go east", "open door", "open wooden door", "take coin", "look", "inventory"]


@pytest.mark.parametrize("answer, action, method", [
    ("Action: move_left", "move_left", "final"),
    ("I should go west first.\nFinal answer: Move Left", "move_left", "final"),
    ("The tree is north, so: move up", "move_up", "final"),
    # "don't" and "down" must not be read as "do"
    ("I don't see anything useful; go down.\nAction: sleep", "sleep", "final"),
    ("Don't sleep now. Move Down", "move_down", "final"),
    ("You should not do anything risky; move_right instead", "move_right", "final"),
    ("Do not move_left, it is better to place_table", "place_table", "final"),
    # the conclusion beats earlier mentions
    ("First noop, then maybe sleep.\nThe best action is do", "do", "final"),
    # no marker and nothing on the last line: earliest mention anywhere
    ("make_wood_pickaxe needs a table nearby.\nThat is my plan.", "make_wood_pickaxe", "earliest"),
    # typos: fuzzy
    ("Action: mvoe_left", "move_left", "fuzzy"),
    ("Action: place tabel", "place_table", "fuzzy"),
])
def test_robust_parsing_on_crafter(answer, action, method):
    parsed = parse_action(answer, ACTIONS)
    assert (parsed.action, parsed.method) == (action, method)
    assert not parsed.failed


@pytest.mark.parametrize("answer", ["", "I don't know.", "Go down to the lake.", "Maybe later, nothing fits.",
                                    "I should not sleep"])
def test_unparseable_answers_fail(answer):
    parsed = parse_action(answer, ACTIONS)
    assert parsed.failed and parsed.action is None and parsed.method == "failed"


def test_faithful_rule_reads_dont_and_down_as_do():
    # the original rule: first action in list order found as a substring, else "do"
    assert parse_action_faithful("I don't know", ACTIONS).action == "do"
    assert parse_action_faithful("Go down to the lake.", ACTIONS).action == "do"
    assert parse_action_faithful("Go down to the lake.", ACTIONS).method == "faithful"
    # list order beats position in the text
    assert parse_action_faithful("sleep, then noop", ACTIONS).action == "noop"
    default = parse_action_faithful("nothing fits", ACTIONS)
    assert default.action == "do" and default.failed
    # the robust parser disagrees where the substring rule misfires
    assert parse_action("I don't know", ACTIONS).failed
    assert parse_action("sleep, then noop", ACTIONS).action == "sleep"


def test_longest_name_wins_and_case_is_ignored():
    assert parse_action("Command: Open Wooden Door", TEXTWORLD).action == "open wooden door"
    assert parse_action("command: open door", TEXTWORLD).action == "open door"
    assert parse_action("I will TAKE COIN.", TEXTWORLD).action == "take coin"


def test_final_segment_uses_the_last_marker_or_last_line():
    assert final_segment("Action: noop. Final answer: do it").strip() == "do it"
    assert final_segment("line one\nline two\n\n") == "line two"
