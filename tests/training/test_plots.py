"""Plots: every function writes a real PNG from its data, and bad data fails with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cli.plot import main
from envs.crafter import ACHIEVEMENTS
from evaluation import plots
from evaluation.plots import (plot_action_strip, plot_action_usage, plot_bbh_tasks, plot_crafter_achievements,
                              plot_evaluation, plot_rl_comparison, plot_training_curves)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_width: int = 200) -> tuple[int, int]:
    path = Path(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= min_width and image.height >= 100
        darkest, lightest = image.convert("L").getextrema()
        assert lightest - darkest > 100                        # something was drawn, not a blank canvas
        return image.size


def write_run(directory: Path, rows: list[dict[str, float]]) -> Path:
    """A run directory with one CSV log in the layout Lightning's CSVLogger writes."""
    csv_dir = directory / "logs" / "csv" / "version_0"
    csv_dir.mkdir(parents=True)
    columns = sorted({key for row in rows for key in row})
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    (csv_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    return directory


def test_training_curves_from_run_logs(tmp_path):
    bwarea_run = write_run(tmp_path / "bwarea", [{"step": s, "train/loss": 5 - 0.1 * s, "epoch": 0} for s in range(20)]
                           + [{"step": 19, "val/loss": 3.0}])
    ar_run = write_run(tmp_path / "ar", [{"step": s, "train/loss": 5 - 0.08 * s} for s in range(20)])
    path = plot_training_curves({"BWArea": bwarea_run, "AR": ar_run}, tmp_path / "curves.png")
    assert_png(path)
    one = plot_training_curves(bwarea_run, tmp_path / "one.png", metrics=["train/loss"])
    assert_png(one)
    with pytest.raises(ValueError, match="not in the logs; available: train/loss, val/loss"):
        plot_training_curves(bwarea_run, tmp_path / "x.png", metrics=["train/reward"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no CSV logs"):
        plot_training_curves(tmp_path / "empty", tmp_path / "x.png")


def test_crafter_achievement_bars(tmp_path):
    rates = {name: 100.0 * i / 21 for i, name in enumerate(ACHIEVEMENTS)}
    assert_png(plot_crafter_achievements(rates, tmp_path / "one.png"))
    side_by_side = {"SPRING": {"collect_wood": {"mean": 80.0, "stderr": 10.0}}, "random": {"collect_wood": 40.0}}
    assert_png(plot_crafter_achievements(side_by_side, tmp_path / "two.png"))
    with pytest.raises(ValueError, match="unknown Crafter achievement.*collect_gold"):
        plot_crafter_achievements({"collect_gold": 10.0}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="percentages between 0 and 100"):
        plot_crafter_achievements({"collect_wood": 0.8, "wake_up": 120.0}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_crafter_achievements({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="expected a number, got 'lots'"):
        plot_crafter_achievements({"collect_wood": "lots"}, tmp_path / "x.png")


def test_bbh_task_bars(tmp_path):
    accuracy = {"navigate": {"mean": 55.0, "stderr": 4.0}, "boolean_expressions": 70.0, "word_sorting": 0.0}
    assert_png(plot_bbh_tasks(accuracy, tmp_path / "bbh.png", macro={"mean": 41.7, "stderr": 2.0}))
    with pytest.raises(ValueError, match="'mean'"):
        plot_bbh_tasks({"navigate": {"stderr": 1.0}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="PNG files"):
        plot_bbh_tasks(accuracy, tmp_path / "bbh.jpg")


def test_latent_action_usage_histogram(tmp_path):
    actions = [3] * 10 + [17] * 5 + [63]
    path = plot_action_usage(actions, tmp_path / "usage.png")
    assert_png(path)
    assert_png(plot_action_usage({"3": 10, 17: 5}, tmp_path / "counts.png"))
    with pytest.raises(ValueError, match="action 64 is outside 0..63"):
        plot_action_usage([1, 64], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no actions to count"):
        plot_action_usage([], tmp_path / "x.png")


def test_per_token_action_strip(tmp_path):
    tokens = ["You", " see", " a", " tree", ".", "\n", ">", " go", " west"] * 6
    actions = [(7 * i) % 64 for i in range(len(tokens))]
    width, height = assert_png(plot_action_strip(tokens, actions, tmp_path / "strip.png"))
    _, short_height = assert_png(plot_action_strip(tokens[:5], actions[:5], tmp_path / "short.png"))
    assert height > short_height                               # long texts wrap onto more lines
    with pytest.raises(ValueError, match="one action per token; got 9 tokens and 8 actions"):
        plot_action_strip(tokens[:9], actions[:8], tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside 0..7"):
        plot_action_strip(["a"], [9], tmp_path / "x.png", num_actions=8)
    with pytest.raises(ValueError, match="integers"):
        plot_action_strip(["a"], ["x"], tmp_path / "x.png")


def test_before_after_rl_comparison_bars(tmp_path):
    table = {"BWArea": {"before": {"mean": 20.0, "stderr": 5.0}, "after": {"mean": 45.0, "stderr": 6.0}},
             "AR": {"before": 22.0, "after": 30.0}}
    assert_png(plot_rl_comparison(table, tmp_path / "rl.png", metric="textworld_normalised_score (%)"))
    with pytest.raises(ValueError, match="row of 'AR' must map phases"):
        plot_rl_comparison({"AR": 3.0}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="finite"):
        plot_rl_comparison({"AR": {"before": float("inf")}}, tmp_path / "x.png")


SUMMARY = {
    "settings": {"agent": {"source": "random"}},
    "environments": {
        "crafter": {"metrics": {"crafter_score": {"mean": 1.0, "stderr": 0.1, "n": 2, "unit": "%"}},
                    "achievement_success_rates": {"wake_up": {"mean": 100.0, "stderr": 0.0, "n": 2, "unit": "%"}}},
        "bbh/navigate": {"metrics": {"bbh_accuracy": {"mean": 50.0, "stderr": 20.0, "n": 5, "unit": "%"}}},
        "textworld/coin-easy": {"metrics": {"textworld_normalised_score": {"mean": 40.0, "stderr": 10.0, "n": 5, "unit": "%"}}},
    },
    "aggregates": {"bbh_macro_accuracy": {"mean": 50.0, "stderr": 20.0, "n": 5, "unit": "%", "tasks": 1}},
    "latent_actions": {"0": 4, "12": 9},
}


def test_all_plots_of_an_evaluation_and_the_command(tmp_path):
    written = plot_evaluation(SUMMARY, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["bbh_tasks.png", "crafter_achievements.png", "latent_actions.png"]
    for path in written:
        assert_png(path)
    with pytest.raises(ValueError, match="evaluation summary"):
        plot_evaluation({"metrics": {}}, tmp_path)

    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "summary.json").write_text(json.dumps(SUMMARY))
    assert main(["evaluation", "--dir", str(evaluation)]) == 0
    assert (evaluation / "plots" / "bbh_tasks.png").is_file()
    table = tmp_path / "table.yaml"
    table.write_text(f"BWArea: {{before: {evaluation}, after: {{mean: 60.0, stderr: 5.0}}}}\nAR: {{before: 35.0, after: 41.0}}\n")
    assert main(["compare", "--table", str(table), "--out", str(tmp_path / "rl.png")]) == 0
    assert_png(tmp_path / "rl.png")
    assert main(["compare", "--table", str(table), "--metric", "crafter_reward", "--out", str(tmp_path / "y.png")]) == 2
    assert main(["evaluation", "--dir", str(tmp_path)]) == 2


def test_strip_command_draws_a_generation_of_a_saved_model(tmp_path, capsys):
    from cli import generate
    from tests.training.test_evaluate import save_tiny_bwarea

    model = save_tiny_bwarea(tmp_path / "model")
    assert generate.main(["--model", str(model), "--prompt", "You see", "--max_new_tokens", "12", "--json", "true"]) == 0
    generation = tmp_path / "generation.jsonl"
    generation.write_text(capsys.readouterr().out)
    out = tmp_path / "strip.png"
    assert main(["strip", "--generation", str(generation), "--model", str(model), "--out", str(out)]) == 0
    assert_png(out)
    assert main(["strip", "--generation", str(generation), "--model", str(model), "--line", "3"]) == 2
    assert len({plots.action_colour(a) for a in range(plots.NUM_ACTIONS)}) == plots.NUM_ACTIONS   # 64 distinct colours
