import re

import pytest

import envs
from envs import bbh
from envs.bbh import BBHDataError, BBHEnv, extract_answer, normalise

# The final answers of the three chain-of-thought examples in each cot-prompts/<task>.txt, read by hand.
EXEMPLAR_ANSWERS = {
    "boolean_expressions": ["False", "False", "True"],
    "causal_judgement": ["no", "yes", "yes"],
    "date_understanding": ["(D)", "(B)", "(B)"],
    "disambiguation_qa": ["(A)", "(A)", "(C)"],
    "dyck_languages": ["] } ]", "] ) )", "} ] >"],
    "formal_fallacies": ["valid", "valid", "invalid"],
    "geometric_shapes": ["(F)", "(G)", "(D)"],
    "hyperbaton": ["(B)", "(A)", "(B)"],
    "logical_deduction_five_objects": ["(B)", "(A)", "(C)"],
    "logical_deduction_seven_objects": ["(B)", "(A)", "(C)"],
    "logical_deduction_three_objects": ["(B)", "(A)", "(C)"],
    "movie_recommendation": ["(C)", "(C)", "(D)"],
    "multistep_arithmetic_two": ["123", "3929", "-219"],
    "navigate": ["no", "no", "yes"],
    "object_counting": ["6", "11", "8"],
    "penguins_in_a_table": ["(B)", "(B)", "(D)"],
    "reasoning_about_colored_objects": ["(E)", "(F)", "(A)"],
    "ruin_names": ["(A)", "(C)", "(B)"],
    "salient_translation_error_detection": ["(D)", "(E)", "(C)"],
    "snarks": ["(A)", "(B)", "(A)"],
    "sports_understanding": ["yes", "no", "yes"],
    "temporal_sequences": ["(A)", "(A)", "(D)"],
    "tracking_shuffled_objects_five_objects": ["(A)", "(C)", "(C)"],
    "tracking_shuffled_objects_seven_objects": ["(A)", "(C)", "(C)"],
    "tracking_shuffled_objects_three_objects": ["(A)", "(C)", "(C)"],
    "web_of_lies": ["yes", "yes", "no"],
    "word_sorting": ["costume counterpart oven", "credulity hypochlorite phone ponderosa",
                     "arson aspect census mugho newt parthia seismography"],
}


def test_all_27_tasks_load_in_the_original_layout(bbh_dir):
    assert len(bbh.TASKS) == 27 and set(EXEMPLAR_ANSWERS) == set(bbh.TASKS)
    assert sum(len(bbh.items(task, bbh_dir)) for task in bbh.TASKS) == 6511
    assert envs.names().count("bbh/navigate") == 1


def test_missing_directory_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(bbh.DATA_ENV_VAR, raising=False)
    with pytest.raises(BBHDataError, match=r"tasks/<task>\.json.*cot-prompts/<task>\.txt.*BWAREA_BBH_DIR"):
        envs.make("bbh/navigate")
    with pytest.raises(BBHDataError, match=str(tmp_path)):
        bbh.items("navigate", tmp_path)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "cot-prompts").mkdir()
    with pytest.raises(BBHDataError, match=r"missing .*navigate\.json"):
        bbh.items("navigate", tmp_path)


def test_data_dir_from_environment_variable(bbh_dir, monkeypatch):
    monkeypatch.setenv(bbh.DATA_ENV_VAR, str(bbh_dir))
    prompt, info = envs.make("bbh/navigate").reset(seed=0)
    assert info["task"].startswith("Given a series of navigation instructions")


def test_split_is_fixed_disjoint_and_covers_the_task(bbh_dir):
    for task in ("navigate", "snarks", "word_sorting"):
        train, test = bbh.split(task, "train", data_dir=bbh_dir), bbh.split(task, "test", data_dir=bbh_dir)
        every = bbh.items(task, bbh_dir)
        train_ids, test_ids = {i.index for i in train}, {i.index for i in test}
        assert not train_ids & test_ids and train_ids | test_ids == set(range(len(every)))
        assert len(train) == len(every) // 2
        assert bbh.split(task, "train", data_dir=bbh_dir) == train
        assert {i.index for i in bbh.split(task, "train", seed=1, data_dir=bbh_dir)} != train_ids
    assert {i.index for i in bbh.split("navigate", "train", data_dir=bbh_dir)} != \
        {i.index for i in bbh.split("web_of_lies", "train", data_dir=bbh_dir)}


def _exemplars(task, bbh_dir):
    _, examples = bbh._load_prompt(bbh.resolve_data_dir(bbh_dir), task)
    return re.findall(r"Q: (.*?)\nA: (.*?)(?=\n\nQ: |\Z)", examples, re.DOTALL)


@pytest.mark.parametrize("task", bbh.TASKS)
def test_answer_extraction_on_every_task(bbh_dir, task):
    exemplars = _exemplars(task, bbh_dir)
    assert len(exemplars) == 3
    got = [normalise(extract_answer(answer, task), task, question) for question, answer in exemplars]
    assert got == EXEMPLAR_ANSWERS[task]
    env = BBHEnv(task, split="all", data_dir=bbh_dir)
    for item in bbh.items(task, bbh_dir)[:25]:
        target = normalise(item.target, task, item.input)
        for reply in (f"Let's think step by step. Blah.\nSo the answer is {item.target}.",
                      f"The answer is: **{item.target}**",
                      f"I think the answer is {item.target}.\n\nQ: next question?\nA: the answer is (Z)"):
            assert normalise(extract_answer(reply, task), task, item.input) == target, reply
        env.reset(seed=item.index)
        assert env.step(f"So the answer is {item.target}.")[1] == 1.0


def test_normalisation_per_answer_type():
    assert normalise("b", "hyperbaton") == "(B)" and normalise("Option C.", "date_understanding") == "(C)"
    assert normalise("(A) circle", "geometric_shapes") == "(A)"
    question = "Which is it?\nOptions:\n(A) circle\n(B) heptagon"
    assert normalise("Heptagon", "geometric_shapes", question) == "(B)"
    assert normalise("TRUE", "boolean_expressions") == "True" and normalise("No, never.", "navigate") == "no"
    assert normalise("invalid", "formal_fallacies") == "invalid" and normalise("Valid.", "formal_fallacies") == "valid"
    assert normalise("1,024.0", "multistep_arithmetic_two") == "1024" and normalise("eight", "object_counting") == "8"
    assert normalise("-0", "multistep_arithmetic_two") == "0"
    assert normalise("Apple, banana,  cherry.", "word_sorting") == "apple banana cherry"
    assert normalise(")) >", "dyck_languages") == ") ) >"
    # the three items whose target is not an option letter compare as text
    movie = "Find a movie similar to X:\nOptions:\n(A) Monsters\n(B) Inc\n(C) Up"
    assert normalise("Monsters, Inc", "movie_recommendation", movie) == "monsters, inc"
    assert normalise("monsters, inc.", "movie_recommendation", movie) == "monsters, inc"
    assert extract_answer("no marker here but (B) and later (C)", "snarks") == "(C)"
    assert extract_answer("nothing useful", "navigate") == ""


def test_environment_reveals_the_target_only_after_the_step(bbh_dir):
    env = envs.make("bbh/boolean_expressions", data_dir=bbh_dir, split="test", shots=3)
    prompt, info = env.reset(seed=2)
    item = env.items[2]
    assert "target" not in info and info["admissible_actions"] == ["True", "False"]
    assert prompt.startswith("Evaluate the result of a random Boolean expression.\n\nQ: ")
    assert prompt.endswith(f"Q: {item.input}\nA: Let's think step by step.") and prompt.count("Q: ") == 4
    assert "canary" not in prompt
    obs, reward, terminated, truncated, info = env.step(f"... So the answer is {item.target}.")
    assert (reward, terminated, truncated) == (1.0, True, False) and info["target"] == item.target and info["won"]
    assert env.step("again")[1] == 0.0
    env.reset(seed=2)
    wrong = "False" if item.target == "True" else "True"
    _, reward, _, _, info = env.step(f"So the answer is {wrong}.")
    assert reward == 0.0 and info["lost"] and not info["invalid_action"]
    env.reset(seed=2)
    assert env.step("hmm")[4]["invalid_action"]
    zero_shot, _ = envs.make("bbh/boolean_expressions", data_dir=bbh_dir).reset(seed=2)
    assert zero_shot == f"Evaluate the result of a random Boolean expression.\n\nQ: {item.input}\nA:"
    with pytest.raises(ValueError, match="outside the test split"):
        env.reset(seed=10_000)


@pytest.mark.parametrize("reply, task, expected", [
    ("So the answer is so that the given facts and constraints are", "boolean_expressions", ""),
    ("The answer is True. Then the answer is that we cannot say", "boolean_expressions", "True"),
    ("the answer is maybe. Yes, I would walk back, so the answer is unclear", "navigate", "Yes"),
    ("So the answer is circle.", "geometric_shapes", "circle"),           # an option's text
    ("So the answer is the one I like", "date_understanding", ""),
    ("Q:", "navigate", ""),
    ("  Q: Is it true? A: yes", "navigate", ""),
    ("So the answer is apple banana.", "word_sorting", "apple banana"),
])
def test_extraction_keeps_to_the_answer_set(reply, task, expected):
    question = "Which shape?\nOptions:\n(A) circle\n(B) square" if task == "geometric_shapes" else None
    assert extract_answer(reply, task, question) == expected
