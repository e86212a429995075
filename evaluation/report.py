"""The summary of an evaluation (summary.json) and its report (report.md): pure functions of the episode records
and the settings, so a resumed evaluation gives the identical summary and report.

Each environment family declares its metrics, report table and aggregates (envs.EnvFamily); this module only
lays them out: one section per family, each table followed by the settings behind its numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import envs
from common.stats import Estimate
from evaluation.config import FORMAT
from evaluation.provenance import settings_line
from evaluation.records import is_faulted

AGENT_COUNTS = ("steps", "parse_failures", "fallbacks", "faults", "tokens_in", "tokens_out")
PROVENANCE_KINDS = ("exact", "word", "fuzzy", "choice", "fallback")


def _dicts(estimates: Mapping[str, Estimate]) -> dict[str, dict[str, Any]]:
    return {name: e.to_dict() for name, e in estimates.items()}


def summarize(records: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of an evaluation from the episode records (planned ones, in plan order) and the settings."""
    environments: dict[str, Any] = {}
    finished: dict[str, dict[str, list[Mapping[str, Any]]]] = {}   # family -> environment -> good records
    latent_total: dict[str, int] = {}
    for name in settings["suite"]:
        family = envs.family(name)
        planned = settings["environments"][name]["episodes"] * len(settings["seeds"])
        own = [r for r in records if r["env"] == name]
        good = [r for r in own if r.get("error") is None]
        entry: dict[str, Any] = {"family": family.name, "planned": planned, "completed": len(good),
                                 "faulted": sum(is_faulted(r) for r in good), "errored": len(own) - len(good),
                                 "errors": sorted({r["error"] for r in own if r.get("error")}), "metrics": {}}
        if good:
            entry["metrics"] = _dicts(family.metrics(good))
            if family.breakdown is not None:
                entry[family.breakdown.key] = _dicts(family.breakdown.compute(good))
            finished.setdefault(family.name, {})[name] = good
        totals = {key: sum(r["agent_stats"].get(key, 0) for r in good) for key in AGENT_COUNTS}
        provenance: dict[str, int] = {}
        for record in good:
            for how, count in (record["agent_stats"].get("provenance") or {}).items():
                provenance[how] = provenance.get(how, 0) + count
        entry["agent"] = {**totals, "provenance": dict(sorted(provenance.items()))}
        for record in good:
            for action, count in record.get("latent_actions", {}).items():
                latent_total[action] = latent_total.get(action, 0) + count
        environments[name] = entry
    aggregates: dict[str, Any] = {}
    for family_name, by_env in finished.items():
        family = envs.family(family_name)
        if family.aggregate is not None:
            aggregates[family.aggregate.name] = {**family.aggregate.compute(by_env).to_dict(),
                                                 f"{family.row_label}s": len(by_env)}
    complete = all(e["completed"] == e["planned"] for e in environments.values())
    return {"format": FORMAT, "complete": complete, "settings": dict(settings), "environments": environments,
            "aggregates": aggregates,
            "latent_actions": {k: latent_total[k] for k in sorted(latent_total, key=int)}}


def cell(data: Mapping[str, Any] | None, digits: int = 1) -> str:
    """'12.3 ± 4.5' from an Estimate's dict, '—' when there is none."""
    return Estimate.from_dict(data).format(digits) if data else "—"


def _header(column: envs.Column, entries: Sequence[Mapping[str, Any]]) -> str:
    if column.header:
        return column.header
    unit = next((e["metrics"][column.metric].get("unit") for e in entries if column.metric in e["metrics"]), "")
    return f"{column.metric} ({unit})" if unit else column.metric


def family_section(family: envs.EnvFamily, names: Sequence[str], summary: Mapping[str, Any], line: str) -> list[str]:
    """One family's part of report.md: its table (a row per environment, a column per declared metric), its
    aggregate row, its note, its breakdown tables and the settings line."""
    environments = summary["environments"]
    entries = [environments[name] for name in names]
    out = [f"## {family.title}", "",
           f"| {family.row_label} | n | " + " | ".join(_header(c, entries) for c in family.columns) + " |",
           "|---|---|" + "---|" * len(family.columns)]
    for name, entry in zip(names, entries):
        out.append(f"| {family.label(name)} | {entry['completed']} | "
                   + " | ".join(cell(entry["metrics"].get(c.metric), c.digits) for c in family.columns) + " |")
    aggregate = summary["aggregates"].get(family.aggregate.name) if family.aggregate else None
    if aggregate:
        count = aggregate[f"{family.row_label}s"]
        cells = [f"**{cell(aggregate, c.digits)}**" if c.metric == family.aggregate.metric else ""
                 for c in family.columns]
        out.append(f"| **{family.aggregate.name}** ({count} {family.row_label}s) | {aggregate['n']} | "
                   + " | ".join(cells) + " |")
    out.append("")
    if family.note is not None:
        out += [family.note(summary["settings"]["environments"][names[0]]["options"]), ""]
    if family.breakdown is not None:
        for name, entry in zip(names, entries):
            rows = entry.get(family.breakdown.key)
            if rows:
                out += [f"{family.breakdown.title}, {name}:", "",
                        f"| {family.breakdown.row} | {family.breakdown.value} |", "|---|---|"]
                out += [f"| {row} | {cell(value)} |" for row, value in rows.items()]
                out.append("")
    return out + [line, ""]


def render_report(summary: Mapping[str, Any]) -> str:
    """report.md: one table per environment family, each followed by the settings behind its numbers."""
    settings = summary["settings"]
    line = settings_line(settings)
    environments = summary["environments"]
    by_family: dict[str, list[str]] = {}
    for name, entry in environments.items():
        by_family.setdefault(entry["family"], []).append(name)
    out = [f"# Evaluation of agent `{settings['agent']['type']}` ({settings['agent']['source']})", ""]
    if not summary["complete"]:
        out += ["**Incomplete**: some planned episodes are missing or errored; re-run the same command to finish.", ""]
    faulted = sum(entry.get("faulted", 0) for entry in environments.values())
    if faulted:
        out += [f"**{faulted} episode(s) contain backend faults** (steps that took the fallback action after a failed "
                "request); re-running the same command replays them, --keep_faulted true keeps them.", ""]
    out += ["Numbers are mean ± standard error over episodes (items for BIG-Bench Hard); n = episodes.", ""]
    for family_name, names in by_family.items():
        out += family_section(envs.family(family_name), names, summary, line)

    provenance = {name: e["agent"].get("provenance") or {} for name, e in environments.items()}
    if any(provenance.values()):
        kinds = list(PROVENANCE_KINDS)
        others = sorted({k for counts in provenance.values() for k in counts} - set(kinds))
        out += ["## How actions were obtained", "",
                "| environment | steps | " + " | ".join(f"{k} (%)" for k in kinds + others) + " |",
                "|---|---|" + "---|" * len(kinds + others)]
        for name, counts in provenance.items():
            total = sum(counts.values())
            if total:
                out.append(f"| {name} | {total} | " + " | ".join(f"{100.0 * counts.get(k, 0) / total:.1f}"
                                                            for k in kinds + others) + " |")
        out += ["", "exact: the answer is an action name or alias; word: a name found in the answer; fuzzy: a "
                "misspelt short answer; choice: picked among the valid actions by likelihood; fallback: a failed "
                "request or an unparseable answer.", ""]

    faults = {name: e for name, e in environments.items()
              if e["errored"] or e.get("faulted") or e["agent"]["faults"] or e["agent"]["parse_failures"]}
    if faults:
        out += ["## Faults", "", "| environment | errored episodes | faulted episodes | steps with backend faults | "
                "parse failures | fallbacks |", "|---|---|---|---|---|---|"]
        out += [f"| {name} | {e['errored']} | {e.get('faulted', 0)} | {e['agent']['faults']} | "
                f"{e['agent']['parse_failures']} | {e['agent']['fallbacks']} |" for name, e in faults.items()]
        errors = sorted({error for e in faults.values() for error in e["errors"]})
        out += [""] + [f"- error: `{error}`" for error in errors] + ([""] if errors else [])

    out += ["## Settings", "", "```json", json.dumps(settings, indent=2, default=str), "```", ""]
    return "\n".join(out)
