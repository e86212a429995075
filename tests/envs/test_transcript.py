import pytest

from envs.transcript import Transcript, tidy


def test_render_and_prompt_follow_the_shared_format():
    transcript = Transcript("Find the coin.", observation="  You are in a hall.  \n\n\n  A door leads east.  ")
    transcript.step("go   east", "You are in a vault.\n\nThere is a coin here.")
    transcript.step("take coin", "Taken.")
    assert transcript.render() == (
        "Objective: Find the coin.\n"
        "You are in a hall.\nA door leads east.\n"
        "> go east\n"
        "You are in a vault.\nThere is a coin here.\n"
        "> take coin\n"
        "Taken."
    )
    assert transcript.prompt().endswith("Taken.\n>")
    # the most recent turn only; the objective line always stays
    assert transcript.prompt(max_turns=1) == (
        "Objective: Find the coin.\nYou are in a vault.\nThere is a coin here.\n> take coin\nTaken.\n>")
    assert transcript.prompt(max_turns=0) == "Objective: Find the coin.\nTaken.\n>"


def test_first_observation_drops_a_repeated_objective_and_blank_lines():
    transcript = Transcript("Take the coin.", observation="Take the coin.\n\n-= Hall =-\nA hall.")
    assert transcript.observation == "-= Hall =-\nA hall."
    assert tidy("a  b \n\n\n  c\t d ") == "a b\nc d"


def test_parse_command_keeps_the_first_line_of_a_completion():
    assert Transcript.parse_command("  open   door \nYou open the door.") == "open door"


def test_act_and_prompt_need_an_observation():
    transcript = Transcript("x")
    with pytest.raises(ValueError, match="observe"):
        transcript.prompt()
    with pytest.raises(ValueError, match="observe"):
        transcript.act("look")
