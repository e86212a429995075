"""`bwarea evaluate`: any agent on any suite of environments, resumable, with a report.

    bwarea evaluate --agent random --suite textworld/coin-easy crafter --episodes 10 --seeds 0 1 --out runs/eval/random
    bwarea evaluate --config configs/evaluate/textworld-coin.yaml --agent own_model \\
        --agent_overrides '{"backend": {"model": "runs/quickstart/finetune/bwarea/export"}}'
    bwarea evaluate --agent walkthrough --suite 'textworld/*-easy' --episodes 5   # names may be glob patterns

Exit status: 0 complete; 1 incomplete (missing, errored or, without --keep_faulted, faulted episodes); 2 bad
settings; 3 backend unavailable (health check failed or circuit breaker tripped). What an evaluation does and
writes: evaluation/run.py and docs/evaluation.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agents.llm import BackendUnavailable
from cli.options import command, dataclass_parser, parse_dataclass
from evaluation.config import EPISODES_FILE, REPORT_FILE, SUMMARY_FILE, EvaluationConfig
from evaluation.report import render_report
from evaluation.run import EvaluationRun

PROG = "bwarea evaluate"
EXIT_INCOMPLETE = 1
EXIT_BACKEND_UNAVAILABLE = 3


def build_parser():
    return dataclass_parser(PROG, EvaluationConfig)


def parse_config(argv: Sequence[str] | None = None) -> EvaluationConfig:
    """EvaluationConfig from command-line arguments (and --config files)."""
    return parse_dataclass(build_parser(), EvaluationConfig, argv, configs_kind="evaluate")


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    evaluation = EvaluationRun(config)
    try:
        summary = evaluation.run()
    except BackendUnavailable as error:
        print(f"{PROG}: {error}. Finished episodes are kept; re-run the same command once the backend works.",
              file=sys.stderr)
        return EXIT_BACKEND_UNAVAILABLE
    print(render_report(summary).split("## Settings")[0].rstrip())
    out = evaluation.out
    print(f"\nwrote {out / SUMMARY_FILE}, {out / REPORT_FILE} and {out / EPISODES_FILE}")
    faulted = sum(entry.get("faulted", 0) for entry in summary["environments"].values())
    return 0 if summary["complete"] and (config.keep_faulted or not faulted) else EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
