"""Report arithmetic on fixed data, every number computed by hand in the comments."""

import math

import pytest

from common.stats import Estimate, estimate, macro_average
from envs.bbh import bbh_metrics
from envs.crafter import ACHIEVEMENTS, crafter_metrics, crafter_score_estimate
from envs.textworld import textworld_metrics


def test_mean_and_standard_error():
    # mean 2.5; sample variance ((1.5^2 + 0.5^2) * 2) / 3 = 5/3; se = sqrt(5/3) / sqrt(4) = 0.6454972
    result = estimate([1, 2, 3, 4], "steps")
    assert result.mean == pytest.approx(2.5)
    assert result.stderr == pytest.approx(math.sqrt(5 / 3) / 2)
    assert (result.n, result.unit) == (4, "steps")
    assert estimate([7.0]).stderr is None                      # undefined for one unit
    assert estimate([3, 3, 3]).stderr == 0.0
    assert Estimate(12.345, 0.5, 3).format(1) == "12.3 ± 0.5"
    assert Estimate(12.345, None, 1).format(2) == "12.35 ± n/a"
    with pytest.raises(ValueError, match="at least one"):
        estimate([])
    with pytest.raises(ValueError, match="non-finite"):
        estimate([1.0, float("nan")])


def test_textworld_normalised_score_and_success_rate():
    episodes = [
        {"score": 1, "max_score": 1, "won": True, "return": 1.0, "steps": 3},
        {"score": 0, "max_score": 2, "won": False, "return": 0.0, "steps": 30},
        {"score": 1, "max_score": 2, "won": False, "return": 1.0, "steps": 30},
    ]
    metrics = textworld_metrics(episodes)
    # normalised: [100, 0, 50] -> mean 50; sample sd 50; se 50 / sqrt(3) = 28.8675
    assert metrics["textworld_normalised_score"].mean == pytest.approx(50.0)
    assert metrics["textworld_normalised_score"].stderr == pytest.approx(50 / math.sqrt(3))
    # success: [100, 0, 0] -> mean 33.33; sample sd 57.735; se 33.333
    assert metrics["textworld_success_rate"].mean == pytest.approx(100 / 3)
    assert metrics["textworld_success_rate"].stderr == pytest.approx(100 / 3)
    assert metrics["episode_steps"].mean == pytest.approx(21.0)
    # a game without points counts 100 when won
    no_points = textworld_metrics([{"score": 0, "max_score": 0, "won": True, "return": 0, "steps": 1}])
    assert no_points["textworld_normalised_score"].mean == 100.0
    with pytest.raises(ValueError, match="lacks max_score"):
        textworld_metrics([{"score": 1, "won": True, "return": 1, "steps": 2}])


def test_crafter_score_with_delta_method_standard_error():
    episodes = [
        {"achievements": ["collect_wood"], "return": 1.0, "steps": 100},
        {"achievements": ["collect_wood", "place_table"], "return": 2.5, "steps": 100},
    ]
    metrics, per_achievement = crafter_metrics(episodes)
    # success rates: collect_wood 100 %, place_table 50 %, the other 20 are 0 %
    score = math.exp((math.log(101) + math.log(51)) / 22) - 1
    assert metrics["crafter_score"].mean == pytest.approx(score)
    assert metrics["crafter_score"].mean == pytest.approx(0.4748, abs=1e-4)   # exp(ln(101 * 51) / 22) - 1
    # only place_table varies (0 / 100): sample variance 5000; var(s) = 5000 / 2;
    # d score / d s_table = (score + 1) / (22 * 51); se = that * sqrt(2500) = that * 50
    assert metrics["crafter_score"].stderr == pytest.approx((score + 1) / (22 * 51) * 50)
    # achievement fraction per episode: 100/22 and 200/22 -> mean 150/22, se = |difference| / 2
    assert metrics["crafter_achievement_fraction"].mean == pytest.approx(150 / 22)
    assert metrics["crafter_achievement_fraction"].stderr == pytest.approx(100 / 22 / 2)
    assert metrics["crafter_reward"].mean == pytest.approx(1.75)
    assert metrics["crafter_reward"].stderr == pytest.approx(0.75)
    assert per_achievement["collect_wood"].mean == 100.0 and per_achievement["collect_wood"].stderr == 0.0
    assert per_achievement["place_table"].mean == 50.0 and per_achievement["place_table"].stderr == pytest.approx(50.0)
    assert list(per_achievement) == list(ACHIEVEMENTS)


def test_crafter_score_bounds_and_errors():
    assert crafter_score_estimate([[], []]).mean == pytest.approx(0.0)
    everything = crafter_score_estimate([list(ACHIEVEMENTS)] * 3)
    assert everything.mean == pytest.approx(100.0) and everything.stderr == pytest.approx(0.0)
    single = crafter_score_estimate([["collect_wood"]])
    assert single.stderr is None and single.n == 1
    with pytest.raises(ValueError, match="unknown Crafter achievement 'collect_gold'"):
        crafter_score_estimate([["collect_gold"]])
    with pytest.raises(ValueError, match="at least one episode"):
        crafter_score_estimate([])


def test_bbh_accuracy_per_task_and_macro_average():
    per_task, macro = bbh_metrics({"navigate": [True, True, False, False], "boolean_expressions": [True, True, True]})
    # navigate: [100, 100, 0, 0] -> 50 %, sample sd 57.735, se 28.8675; boolean_expressions: 100 %, se 0
    assert per_task["navigate"].mean == 50.0
    assert per_task["navigate"].stderr == pytest.approx(100 / math.sqrt(3) / 2)
    assert per_task["boolean_expressions"].mean == 100.0 and per_task["boolean_expressions"].stderr == 0.0
    # macro: (50 + 100) / 2 = 75 (not the pooled 5/7 = 71.4); se sqrt(28.8675^2 + 0) / 2
    assert macro.mean == pytest.approx(75.0)
    assert macro.stderr == pytest.approx(100 / math.sqrt(3) / 4)
    assert macro.n == 7
    assert list(per_task) == ["boolean_expressions", "navigate"]


def test_macro_average_without_a_standard_error():
    result = macro_average([Estimate(40.0, 5.0, 10, "%"), Estimate(60.0, None, 1, "%")])
    assert result.mean == 50.0 and result.stderr is None and result.n == 11 and result.unit == "%"
    with pytest.raises(ValueError, match="at least one"):
        macro_average([])
    assert Estimate.from_dict(result.to_dict()) == result


def test_balrog_progression_for_crafter_and_textworld():
    crafter = [{"achievements": ["collect_wood", "place_table"], "return": 2.0, "steps": 10},
               {"achievements": [], "return": 0.0, "steps": 10},
               {"achievements": ["collect_wood"] * 3, "return": 1.0, "steps": 10}]   # repeats count once
    metrics, _ = crafter_metrics(crafter)
    # progression per episode: 2/22, 0, 1/22 -> mean 100 * 3 / 66 = 4.5454...
    assert metrics["balrog_progression"].mean == pytest.approx(100 * 3 / 66)
    assert metrics["balrog_progression"].n == 3 and metrics["balrog_progression"].unit == "%"
    assert metrics["crafter_score"].mean != pytest.approx(metrics["balrog_progression"].mean)   # different metrics
    textworld = [{"score": 1, "max_score": 4, "won": False, "return": 1.0, "steps": 80},
                 {"score": 2, "max_score": 3, "won": True, "return": 2.0, "steps": 9},
                 {"score": 0, "max_score": 0, "won": False, "return": 0.0, "steps": 80}]
    # 25, 100 (won), 0 (no points, not won) -> mean 41.666...
    assert textworld_metrics(textworld)["balrog_progression"].mean == pytest.approx(125 / 3)
