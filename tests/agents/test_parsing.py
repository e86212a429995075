from __future__ import annotations

import pytest

from envs.crafter import ACTION_ALIASES, ACTIONS
from agents.parsing import final_segment, parse_action, parse_action_faithful

TEXTWORLD = ["go east", "open door", "open wooden door", "take coin", "look", "inventory"]


@pytest.mark.parametrize("answer, action, method", [
    ("move west", "move west", "exact"),
    ("Move_Left.", "move west", "exact"),                   # crafter's own name is an alias
    ("Action: Move West", "move west", "exact"),
    ("I should go west first.\nFinal answer: Move West now", "move west", "final"),
    ("The tree is north, so: move north", "move north", "final"),
    # "don't" and "down" must not be read as "do"
    ("I don't see anything useful; go down.\nAction: sleep", "sleep", "exact"),
    ("Don't sleep now. Move South", "move south", "final"),
    ("You should not do anything risky; move_right instead", "move east", "final"),
    ("Do not move west, it is better to place_table", "place_table", "final"),
    # the conclusion beats earlier mentions
    ("First noop, then maybe sleep.\nThe best action is do", "do", "exact"),
    # no marker and nothing on the last line: earliest mention anywhere
    ("make_wood_pickaxe needs a table nearby.\nThat is my plan.", "make_wood_pickaxe", "earliest"),
    # typos in a short final answer: fuzzy
    ("Action: mvoe west", "move west", "fuzzy"),
    ("Action: place tabel", "place_table", "fuzzy"),
])
def test_robust_parsing_on_crafter(answer, action, method):
    parsed = parse_action(answer, ACTIONS, aliases=ACTION_ALIASES)
    assert (parsed.action, parsed.method) == (action, method)
    assert not parsed.failed


@pytest.mark.parametrize("alias", sorted(ACTION_ALIASES))
def test_every_alias_parses(alias):
    assert parse_action(alias, ACTIONS, aliases=ACTION_ALIASES).action == ACTION_ALIASES[alias]
    assert parse_action(f"Action: {alias.upper()}.", ACTIONS, aliases=ACTION_ALIASES).action == ACTION_ALIASES[alias]


@pytest.mark.parametrize("answer", [
    "Name up to five actions from the list that help most right now, each with a priority.",
    "The player helps most right now by waiting for the cow.",
    "Look around you: the room is empty and most doors are closed.",
])
def test_fuzzy_matching_never_reads_common_words_inside_a_sentence(answer):
    """SPRING's "helps most right now" once fuzzy-matched move_right (ratio 0.8 against "most right")."""
    assert parse_action(answer, ACTIONS, aliases=ACTION_ALIASES).failed
    assert parse_action(answer, ["move right", "move left", "open door", "take coin"]).failed


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


def test_mentions_inside_sentences_copied_from_the_observation_do_not_count():
    observation = "-= Kitchen =-\nLook around you. You see a closed door to the east and a coin on the floor."
    assert parse_action("Look around you. You see a closed door", TEXTWORLD, echo=observation).failed
    echoed_then_chosen = "Look around you.\nI will take coin"
    assert parse_action(echoed_then_chosen, TEXTWORLD, echo=observation).action == "take coin"
    assert parse_action("Command: look", TEXTWORLD, echo=observation).action == "look"        # a short answer
    assert parse_action("I would look around the room first", TEXTWORLD, echo=observation).action == "look"
    assert parse_action("Look around you. You see a closed door", TEXTWORLD).action == "look"   # no echo given
