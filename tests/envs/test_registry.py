import pytest

import envs
from envs.batch import BatchEnv


def test_names_cover_the_three_families():
    names = envs.names()
    assert "crafter" in names and "textworld/coin-easy" in names and "textworld/custom-medium" in names
    assert sum(name.startswith("bbh/") for name in names) == 27
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", ["crafterr", "textworld/coin-impossible", "bbh/chess", "textworld", "crafter/x", ""])
def test_unknown_names_list_the_valid_ones(name):
    with pytest.raises(ValueError) as error:
        envs.make(name)
    message = str(error.value)
    assert repr(name) in message and "textworld/<preset>" in message and "bbh/<task>" in message
    assert "coin-easy" in message and "word_sorting" in message


def test_batch_needs_matching_lengths_and_a_reset(bbh_dir):
    batch = envs.make_batch("bbh/navigate", 3, data_dir=bbh_dir)
    assert isinstance(batch, BatchEnv) and len(batch) == 3 and batch.done == [True] * 3
    with pytest.raises(RuntimeError, match="reset"):
        batch.step(["a", "b", "c"])
    observations, infos = batch.reset(seeds=[0, 1, 2])
    assert len(set(observations)) == 3 and batch.running == [0, 1, 2]
    with pytest.raises(ValueError, match="3 seeds|3 environments"):
        batch.reset(seeds=[0])
    _, rewards, terminated, _, infos = batch.step(["The answer is Yes."] * 3)
    assert terminated == [True] * 3 and all("target" in info for info in infos)
    assert rewards == [float(info["target"] == "Yes") for info in infos]
    batch.reset_one(1, seed=5)
    assert batch.running == [1]
    with pytest.raises(ValueError, match="needs an action"):
        batch.step([None, None, None])
    _, rewards, _, _, infos = batch.step([None, "So the answer is No.", None])
    assert rewards[0] == rewards[2] == 0.0 and infos[1]["index"] == 5
    with pytest.raises(ValueError, match="at least one"):
        BatchEnv([])
