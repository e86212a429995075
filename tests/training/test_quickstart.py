"""`bwarea quickstart` end to end with the micro config: games, corpus, both pretrainings, ReMax for both
models, the before/after table, plots, the SPRING demo; a second run reuses everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main as cli

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_micro_quickstart_reports_both_models_and_a_second_run_reuses_the_work(tmp_path, tw_cache, capsys):
    out = tmp_path / "quickstart"
    arguments = ["quickstart", "--config", str(REPO / "configs" / "quickstart" / "micro.yaml"), "--out", str(out),
                 "--textworld_cache", str(tw_cache), "--threads", "1"]
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "| BWArea |" in printed and "| AR baseline |" in printed and "| Random agent (uniform" in printed and "Against the random agent" in printed
    assert "SPRING chose" in printed and "choose" in printed  # the DAG trace of the demo, node by node

    summary = json.loads((out / "summary.json").read_text())
    for model in ("bwarea", "ar"):
        for phase in ("before", "after"):
            success = summary["results"][model][phase]["success_rate"]
            assert success["n"] == 2 and 0.0 <= success["mean"] <= 100.0
    assert summary["random_agent"]["success_rate"]["n"] == 2   # the same held-out games as the models
    assert summary["models"]["bwarea"]["trained_parameters"] < summary["models"]["bwarea"]["parameters"]
    assert summary["models"]["ar"]["trained_parameters"] == summary["models"]["ar"]["parameters"]
    for plot in summary["plots"]:
        assert Path(plot).read_bytes()[:8] == PNG_SIGNATURE
    assert (out / "report.md").read_text().startswith("# bwarea quickstart report")

    exports = [out / "pretrain" / name / "export" / "model.safetensors" for name in ("world", "policy", "ar")]
    exports += [out / "finetune" / name / "export" / "model.safetensors" for name in ("bwarea", "ar")]
    written = {path: path.stat().st_mtime_ns for path in exports}
    assert cli.main([*arguments, "--spring_steps", "0"]) == 0
    assert {path: path.stat().st_mtime_ns for path in exports} == written  # nothing retrained
    assert json.loads((out / "summary.json").read_text())["results"] == summary["results"]

    # another RL budget, or another corpus, must not silently reuse the runs made for the old one
    assert cli.main([*arguments, "--spring_steps", "0", "--finetune.updates", "3"]) == 2
    assert "updates differ" in capsys.readouterr().err
    assert cli.main([*arguments, "--spring_steps", "0", "--train_games", "3"]) == 2
    assert "corpus differ" in capsys.readouterr().err
    assert json.loads((out / "corpus" / "plan.json").read_text())["games"] == 3   # the corpus itself was rebuilt
    assert {path: path.stat().st_mtime_ns for path in exports} == written
