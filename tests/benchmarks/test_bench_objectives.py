"""The pure parts of benchmarks/bench_objectives.py: evaluation points, settings, curves, costs, records, table."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_objectives.py"
spec = importlib.util.spec_from_file_location("bench_objectives", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up while the script loads
spec.loader.exec_module(bench)


def test_evaluation_points_halve_from_the_budget_and_must_end_at_it():
    assert bench.evaluation_points(24) == [3, 6, 12, 24]
    assert bench.evaluation_points(10) == [1, 2, 5, 10]
    assert bench.evaluation_points(2) == [1, 2]
    assert bench.evaluation_points(8, [8, 2, 2, 4]) == [2, 4, 8]
    for updates, points in ((8, [2, 4]), (8, [0, 8]), (8, [4, 9])):
        with pytest.raises(ValueError, match="--eval_points"):
            bench.evaluation_points(updates, points)
    with pytest.raises(ValueError, match="--updates"):
        bench.evaluation_points(0)


def test_objectives_must_be_known_and_their_groups_divide_the_batch():
    bench.check_objectives(list(bench.OBJECTIVES), 16)
    bench.check_objectives(["remax", "ppo"], 6)  # no group objective: any batch
    with pytest.raises(ValueError, match="rloo's group size 4"):
        bench.check_objectives(["remax", "rloo"], 6)
    with pytest.raises(ValueError, match="not in this benchmark's table"):
        bench.check_objectives(["remax", "a2c"], 16)


def fake_quickstart(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = {"test_games": 24, "train_games": 64, "textworld_preset": "coin-easy", "textworld_cache": "/cache",
              "evaluation": {"max_turns": 8, "max_new_tokens": 12},
              "finetune": {"task_pool": 32, "learning_rate": 3e-5, "precision": "32-true",
                           "rollout": {"max_turns": 8, "max_new_tokens": 12}}}
    (root / "summary.json").write_text(json.dumps({"config": config}))
    for stage in ("policy", "ar"):
        (root / "pretrain" / stage / "export").mkdir(parents=True)
        (root / "pretrain" / stage / "export" / "training_info.json").write_text("{}")
    return root


def settings_for(tmp_path: Path, *options: str):
    return bench.resolve(bench.build_parser().parse_args(["--quickstart", str(tmp_path), *options]))


def test_settings_come_from_the_preset_the_options_and_the_quickstart(tmp_path):
    fake_quickstart(tmp_path)
    full = settings_for(tmp_path)
    assert (full.updates, full.eval_points, full.episodes_per_update, full.seeds) == (24, [3, 6, 12, 24], 16, [0, 1, 2])
    assert (full.learning_rate, full.precision, str(full.out)) == (3e-5, "32-true", "runs/bench-objectives")
    textworld, bbh = full.tasks["textworld"], full.tasks["bbh"]
    assert (textworld.env, textworld.task_pool, textworld.test_episodes) == ("textworld/coin-easy", 32, 24)
    assert textworld.options == {"cache_dir": "/cache"} and textworld.test_options()["split"] == "test"
    assert (bbh.env, bbh.task_pool, bbh.test_episodes, bbh.rollout["max_turns"]) == ("bbh/boolean_expressions", 100, 100, 1)
    assert full.export("bwarea") == tmp_path / "pretrain" / "policy" / "export"

    smoke = settings_for(tmp_path, "--smoke", "--seeds", "3", "4", "--test_games", "99", "--tasks", "textworld")
    assert (smoke.updates, smoke.eval_points, smoke.episodes_per_update, smoke.seeds) == (2, [1, 2], 4, [3, 4])
    assert smoke.tasks["textworld"].test_episodes == 24  # never more than the quickstart's generated test games
    assert list(smoke.tasks) == ["textworld"] and str(smoke.out) == "runs/bench-objectives-smoke"


def test_settings_refuse_a_missing_model_or_quickstart(tmp_path):
    with pytest.raises(ValueError, match="no summary.json"):
        settings_for(tmp_path)
    fake_quickstart(tmp_path)
    (tmp_path / "pretrain" / "ar" / "export" / "training_info.json").unlink()
    with pytest.raises(ValueError, match="no finished ar model"):
        settings_for(tmp_path)
    assert settings_for(tmp_path, "--models", "bwarea").models == ["bwarea"]


def test_jobs_list_the_references_first_then_one_per_curve(tmp_path):
    fake_quickstart(tmp_path)
    listed = bench.jobs(settings_for(tmp_path, "--objectives", "remax", "ppo", "--seeds", "0", "1", "--models", "ar"))
    assert listed[:2] == [["reference", "textworld"], ["reference", "bbh"]]
    assert len(listed) == 2 + 2 * 2 * 2 and ["run", "bbh", "ar", "ppo", 1] in listed


def test_curve_is_the_mean_and_standard_error_over_seeds():
    points = bench.curve({0: {2: 10.0, 4: 40.0}, 1: {2: 20.0, 4: 50.0}, 2: {2: 30.0}}, episodes_per_update=16)
    assert [p["updates"] for p in points] == [2, 4] and [p["sampled_episodes"] for p in points] == [32, 64]
    first, last = points[0]["success"], points[1]["success"]
    assert first["mean"] == pytest.approx(20.0) and first["stderr"] == pytest.approx(10.0 / math.sqrt(3)) and first["n"] == 3
    assert last["mean"] == pytest.approx(45.0) and last["stderr"] == pytest.approx(5.0) and last["n"] == 2
    assert points[1]["per_seed"] == {"0": 40.0, "1": 50.0}
    assert bench.curve({0: {1: 25.0}}, 4)[0]["success"]["stderr"] is None  # one seed: no standard error


def test_costs_take_the_median_time_the_peak_memory_and_count_greedy_episodes():
    def row(seconds, memory, greedy):
        return {"step": 0.0, "finetune/seconds_per_update": seconds, "finetune/peak_memory_mb": memory,
                **({"finetune/reward/greedy": 0.5} if greedy else {})}

    remax = [[row(1.0, 100.0, True), row(5.0, 120.0, True), {"step": 1.0, "lr-AdamW": 3e-5}], [row(2.0, 90.0, True)]]
    costs = bench.run_costs(remax, episodes_per_update=16, group_size=1)
    assert costs == {"seconds_per_update": 2.0, "peak_memory_mb": 120.0, "updates_per_run": 2, "greedy_episodes_per_run": 32}
    grouped = bench.run_costs([[row(1.0, 1.0, True)]], episodes_per_update=16, group_size=4)
    assert grouped["greedy_episodes_per_run"] == 4  # one greedy twin per group of 4
    assert bench.run_costs([[row(1.0, 1.0, False)]], 16, 1)["greedy_episodes_per_run"] == 0
    assert bench.run_costs([[]], 16, 1) == {}


def test_records_are_reused_only_with_the_same_plan(tmp_path):
    path = tmp_path / "deep" / "record.json"
    bench.write_json(path, {"plan": {"updates": 3}, "evaluation": 1})
    assert bench.read_record(path, {"updates": 3})["evaluation"] == 1
    assert bench.read_record(path, {"updates": 6}) is None
    assert bench.read_record(tmp_path / "missing.json") is None
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temporary file left


def test_markdown_table_rows(tmp_path):
    fake_quickstart(tmp_path)
    settings = settings_for(tmp_path, "--objectives", "remax", "rloo", "--models", "bwarea")
    success = {"mean": 37.5, "stderr": 4.31, "n": 3, "unit": "%"}
    curves = {"bwarea": {"rloo": {"points": [{"updates": 24, "sampled_episodes": 384, "success": success}],
                                  "costs": {"seconds_per_update": 4.5, "peak_memory_mb": 950.4, "greedy_episodes_per_run": 0}}}}
    tasks = {"textworld": {"env": "textworld/coin-easy", "pretrained": {"bwarea": {"mean": 16.7, "stderr": 7.8}},
                           "random": {"mean": 15.1, "stderr": 1.5}, "walkthrough": {"mean": 100.0, "stderr": 0.0},
                           "curves": curves},
             "bbh": {"env": "bbh/boolean_expressions", "pretrained": {}, "random": None, "walkthrough": None, "curves": {}}}
    text = bench.markdown({"settings": settings.to_dict(), "machine": "a CPU", "tasks": tasks,
                           "failures": [{"job": "run bbh bwarea remax 0", "error": "boom", "log": "x.log"}]})
    assert "| BWArea (RL: policy only) | rloo | 4 | 16.7 ± 7.8 | 37.5 ± 4.3 | 3 | 384 | 0 | 4.50 | 950 |" in text
    assert "| Walkthrough (ceiling) | – | – | 100.0 ± 0.0 |" in text
    assert bench.BBH_NOTE in text and "- run bbh bwarea remax 0: boom (log: x.log)" in text


def test_the_orchestrating_process_does_not_load_torch():
    """Each job's peak memory is read in a child; a child inherits its parent's resident set, so the parent stays small."""
    code = (f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import bench_objectives; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def write_log(run: Path, rows: list[dict]) -> None:
    """A run's CSV log as Lightning's CSVLogger writes it (one column per metric, empty where not logged)."""
    columns = sorted({key for row in rows for key in row})
    path = run / "logs" / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text(",".join(columns) + "\n" + "".join(",".join(str(row.get(c, "")) for c in columns) + "\n" for row in rows))


@pytest.mark.slow  # imports torch and Lightning (the machine line)
def test_collect_reads_each_seeds_points_and_its_longest_runs_log(tmp_path):
    quickstart = fake_quickstart(tmp_path / "qs")
    settings = settings_for(quickstart, "--out", str(tmp_path / "out"), "--tasks", "textworld", "--models", "bwarea",
                            "--objectives", "remax", "--seeds", "0", "1", "--updates", "4", "--episodes_per_update", "8")
    task = settings.tasks["textworld"]

    def record(path: Path, success: float) -> None:
        bench.write_json(path, {"plan": {}, "evaluation": {"success_rate": {"mean": success, "stderr": 5.0, "n": 24}}})

    record(settings.evaluation_file(task, "bwarea"), 12.5)
    bench.write_json(settings.out / "reference" / "textworld-coin-easy.json",
                     {"plan": {}, "random": {"mean": 15.0, "stderr": 1.0, "n": 24}, "walkthrough": None})
    for seed, points in ((0, {1: 10.0, 2: 20.0, 4: 40.0}), (1, {1: 30.0, 2: 50.0})):  # seed 1 stopped after 2 updates
        for updates, success in points.items():
            record(settings.evaluation_file(task, "bwarea", "remax", seed, updates), success)
    root0, root1 = (settings.run_root(task, "bwarea", "remax", seed) for seed in (0, 1))
    greedy_row = {"finetune/reward/greedy": 0.5}
    write_log(root0 / "updates-0004", [{"step": s, "finetune/seconds_per_update": 3.0, "finetune/peak_memory_mb": 900.0,
                                        **greedy_row} for s in range(4)])
    write_log(root0 / "updates-0002", [{"step": 0, "finetune/seconds_per_update": 99.0, "finetune/peak_memory_mb": 5000.0}])
    write_log(root1 / "updates-0002", [{"step": s, "finetune/seconds_per_update": 5.0, "finetune/peak_memory_mb": 950.0,
                                        **greedy_row} for s in range(2)])

    results = bench.collect(settings, [])
    textworld = results["tasks"]["textworld"]
    assert textworld["pretrained"]["bwarea"]["mean"] == 12.5 and textworld["random"]["mean"] == 15.0
    entry = textworld["curves"]["bwarea"]["remax"]
    means = [(p["updates"], p["sampled_episodes"], p["success"]["mean"], p["success"]["n"]) for p in entry["points"]]
    assert means == [(1, 8, 20.0, 2), (2, 16, 35.0, 2), (4, 32, 40.0, 1)]
    # the longest runs only (seed 0: 4 updates, seed 1: 2), not seed 0's shorter run with its odd figures
    assert entry["costs"] == {"seconds_per_update": 3.0, "peak_memory_mb": 950.0, "updates_per_run": 4,
                              "greedy_episodes_per_run": 32}
    assert "| BWArea (RL: policy only) | remax | 1 | 12.5 ± 5.0 | 40.0 ± n/a | 1 | 32 | 32 | 3.00 | 950 |" \
        in bench.markdown(results)
    assert bench.plot_curves(textworld, tmp_path / "curves.png").stat().st_size > 0
