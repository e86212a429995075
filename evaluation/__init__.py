"""Evaluating agents: plan, play, record, summarise and report, with resumable output directories; plots; and
playing or watching one episode in the terminal.

    from evaluation.run import evaluate
    summary = evaluate("random", ["textworld/coin-easy"], episodes=10, seeds=[0], out_dir="runs/eval/random")

Modules: config (EvaluationConfig and file names), plan (which episodes, with which seeds), provenance (the
settings beside every number), records (episodes, the crash-safe JSONL log), report (summary.json and
report.md), run (EvaluationRun: one invocation), plots (PNG plots), play (a terminal session). What each
environment family reports is declared by the family itself (envs.family). Nothing here imports Lightning.
"""
