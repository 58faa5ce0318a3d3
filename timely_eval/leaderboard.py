"""``timely leaderboard``: turn run directories into a readable, comparable report.

Reads the trajectories of one or more runs through :mod:`timely.runrecord` (never their
summaries, so a report cannot be stale), merges them, and writes into ``--out``:
``leaderboard.md`` (one section per task family, lm-eval / BFCL style: score with its confidence
interval next to compliance and latency columns), a self-contained ``leaderboard.html`` (inline
CSS, click-to-sort columns, plots embedded), ``results.json`` (every number of the report) and
the plots of :mod:`plots`. A sweep over several budget multipliers also gets the anytime view
(an AUC column, per-budget curves) and the Figure-3 view of :mod:`timely_eval.anytime`.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from timely.errors import ConfigError
from timely.rng import make_rng
from timely.runrecord import RESULTS, episode_key, read_manifest, read_run, trajectories_file
from timely.types import Trajectory
from timely_eval.anytime import PROTOCOL_NOTES, anytime_rows, auc_by_protocol, protocols
from timely_eval.metrics import FIELDS, aggregate
from timely_eval.plan import budget_sort_key, parse_budget
from timely_eval.suite import family_of

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass
class Run:
    """One run directory as the leaderboard sees it."""

    name: str
    path: Path
    manifest: dict[str, Any]
    trajectories: list[Trajectory]


def load_run(path: str | Path) -> Run:
    """Read a run directory's eval episodes (each episode key once, calibration left out).

    Raises:
        ConfigError: ``path`` is not a run directory (the message says what to pass).
    """
    file = trajectories_file(path)
    return Run(
        name=file.parent.name,
        path=file.parent,
        manifest=read_manifest(file.parent),
        trajectories=read_run(file),
    )


def merge_runs(runs: list[Run]) -> list[Trajectory]:
    """All runs' trajectories; a label two runs made with different settings gets the run name.

    The same episode key in two runs is the same episode and is counted once.
    """
    seen_keys: set[str] = set()
    label_fp: dict[str, str] = {}
    out: list[Trajectory] = []
    for run in runs:
        for t in run.trajectories:
            key = episode_key(t.metadata)
            if key is not None:
                if key in seen_keys:
                    continue
                seen_keys.add(key)
            label = str(t.metadata.get("label", t.policy))
            first = label_fp.setdefault(label, t.config_hash)
            if first != t.config_hash:
                t = t.model_copy(
                    update={"metadata": {**t.metadata, "label": f"{label} ({run.name})"}}
                )
            out.append(t)
    return out


@functools.lru_cache(maxsize=256)
def latency_value(spec: str) -> float:
    """A typical latency in seconds for a spec (its mean, by sampling), NaN if unknown."""
    from timely_server.latency import parse_latency

    try:
        model = parse_latency(spec)
    except ValueError:
        return float("nan")
    rng = make_rng("leaderboard", spec)
    return float(np.mean([model.sample(rng) for _ in range(2000)]))


def latency_short(spec: str) -> str:
    """A column label: 'constant:0.2' -> '0.2s', 'lognormal:1.0,0.6' -> '~1s' (the median).

    Other specs are unchanged; the legend under each table names them in full.
    """
    kind, _, arg = spec.partition(":")
    try:
        first = float(arg.split(",")[0])
    except ValueError:
        return spec
    if kind == "constant":
        return f"{first:g}s"
    if kind == "lognormal":
        return f"~{first:g}s"
    return spec


def report_from_runs(paths: list[str | Path | Run]) -> dict[str, Any]:
    """Every number of a leaderboard, as one JSON-safe dict.

    Args:
        paths: run directories (or their trajectories files), or runs already loaded.
    """
    if not paths:
        raise ConfigError("give at least one run directory")
    runs = [p if isinstance(p, Run) else load_run(p) for p in paths]
    trajs = merge_runs(runs)
    latencies = sorted({t.latency for t in trajs}, key=lambda s: (latency_value(s), s))
    families = []
    for family in sorted({family_of(t.task_id) for t in trajs}):
        ft = [t for t in trajs if family_of(t.task_id) == family]
        overview = aggregate(ft, ("policy",))
        by_latency = aggregate(ft, ("policy", "latency"))
        for row in overview:
            row["by_latency"] = {
                r["latency"]: r["score"] for r in by_latency if r["policy"] == row["policy"]
            }
        anytime = anytime_rows(ft, ("policy",))
        for row in overview:
            row["auc"] = auc_by_protocol(anytime, row["policy"])
        overview.sort(key=lambda r: (-r["score"], r["policy"]))
        cells = aggregate(ft, ("policy", "latency", "budget"))
        lat_rank = {s: i for i, s in enumerate(latencies)}
        cells.sort(
            key=lambda r: (r["policy"], lat_rank[r["latency"]], budget_sort_key(r["budget"]))
        )
        families.append(
            {
                "family": family,
                "tasks": sorted({t.task_id for t in ft}),
                "latencies": [s for s in latencies if any(t.latency == s for t in ft)],
                "budgets": sorted({r["budget"] for r in cells}, key=budget_sort_key),
                "overview": overview,
                "by_latency": by_latency,
                "by_budget": aggregate(ft, ("policy", "budget")),
                "cells": cells,
                "tasks_detail": aggregate(ft, ("policy", "task", "latency", "budget")),
                "auc_protocols": protocols(anytime),
                "anytime": anytime,
                "anytime_tasks": anytime_rows(ft, ("policy", "task")),
            }
        )
    return {
        "runs": [
            {
                "name": r.name,
                "path": str(r.path),
                "suite": r.manifest.get("suite"),
                "created": r.manifest.get("created"),
                "git_sha": r.manifest.get("git_sha"),
                "episodes": len(r.trajectories),
                "clocks": sorted({t.clock for t in r.trajectories}),
                "budget_protocols": budget_protocols(r.trajectories),
            }
            for r in runs
        ],
        "episodes": len(trajs),
        "latencies": latencies,
        "latency_values": {s: latency_value(s) for s in latencies},
        "families": families,
    }


def budget_protocols(trajs: list[Trajectory]) -> list[str]:
    """How a run's budgets were set: 'seconds' (absolute or a task's default), 'policy'
    (multiples of each policy's own time) and/or 'oracle' (of the shared reference)."""
    found = set()
    for t in trajs:
        parsed = parse_budget(FIELDS["budget"](t))
        found.add("seconds" if parsed is None else parsed[0])
    return [p for p in ("seconds", "policy", "oracle") if p in found]


# ---- rendering ---------------------------------------------------------------------------------


def fmt_score(row: dict[str, Any]) -> str:
    return f"{row['score']:.2f} [{row['score_lo']:.2f}, {row['score_hi']:.2f}]"


def fmt_share(row: dict[str, Any]) -> str:
    if row.get("gen_share") is None:
        return "-"
    return f"{100 * row['gen_share']:.0f}% / {100 * row['tool_share']:.0f}%"


def overview_columns(family: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a family's overview table (policies pooled over tasks and budgets)."""
    lats = family["latencies"]
    header = [
        "Policy",
        "Score [95% CI]",
        *(f"@{latency_short(s)}" for s in lats),
        "On time",
        "Raw score",
        "Mean s",
        "P95 s",
        "Tool calls",
        "Gen / tool",
        "n",
    ]
    rows = []
    passes = _with_pass_at_k(family["overview"])
    if passes:
        header.insert(2, "Pass@k")
    aucs = family.get("auc_protocols") or []
    header[2:2] = [auc_header(p) for p in aucs]
    for r in family["overview"]:
        by_lat = [f"{r['by_latency'][s]:.2f}" if s in r["by_latency"] else "-" for s in lats]
        rows.append(
            [
                r["policy"],
                fmt_score(r),
                *by_lat,
                f"{r['compliance']:.0%}",
                f"{r['raw_score']:.2f}",
                f"{r['mean_elapsed_s']:.1f}",
                f"{r['p95_elapsed_s']:.1f}",
                f"{r['tool_calls']:.1f}",
                fmt_share(r),
                str(r["n"]),
            ]
        )
        if passes:
            rows[-1].insert(2, fmt_pass(r))
        rows[-1][2:2] = [fmt_auc((r.get("auc") or {}).get(p)) for p in aucs]
    return header, rows


def auc_header(protocol: str) -> str:
    """'AUC' for per-policy multipliers, 'AUC@oracle' for the shared reference's."""
    return "AUC" if protocol == "policy" else f"AUC@{protocol}"


def fmt_auc(value: dict[str, Any] | None) -> str:
    """'0.71 [0.62, 0.80]', '0.71' without an interval, '-' where the policy has no AUC."""
    if not value or value.get("auc") is None:
        return "-"
    if value.get("auc_lo") is None:
        return f"{value['auc']:.2f}"
    return f"{value['auc']:.2f} [{value['auc_lo']:.2f}, {value['auc_hi']:.2f}]"


def _multiplier_budgets(rows: list[dict[str, Any]]) -> list[str]:
    """Column labels 'x0.5', 'x1', ... of the multipliers any row has, in order."""
    ms = sorted({p["multiplier"] for r in rows for p in r["curve"]})
    return [f"x{m:g}" for m in ms]


def anytime_columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The anytime table: AUC and on-time score at each multiplier, per policy and protocol.

    Args:
        rows: :func:`timely_eval.anytime.anytime_rows` of a family (``policy`` or
            ``policy, task`` groups).
    """
    rows = [r for r in rows if r["auc"] is not None]
    by_task = any("task" in r for r in rows)
    budgets = _multiplier_budgets(rows)
    header = [
        "Policy",
        *(["Task"] if by_task else []),
        "Budgets",
        "AUC [95% CI]",
        *budgets,
        "Instances",
        "n",
    ]
    out = []
    for r in sorted(rows, key=lambda r: (r["protocol"], -r["auc"], r["policy"], r.get("task", ""))):
        at = {f"x{p['multiplier']:g}": f"{p['score']:.2f}" for p in r["curve"]}
        out.append(
            [
                r["policy"],
                *([r["task"]] if by_task else []),
                protocol_label(r["protocol"]),
                fmt_auc(r),
                *(at.get(b, "-") for b in budgets),
                str(r["instances"]),
                str(r["n"]),
            ]
        )
    return header, out


def protocol_label(protocol: str) -> str:
    """How a budget protocol reads in a table: 'x policy' or 'x oracle'."""
    return "x own time" if protocol == "policy" else f"x {protocol} time"


def _fmt_rho(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def effort_columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The Figure-3 table: tool calls and generated tokens by multiplier, with Spearman rho.

    Each quantity shows its means from the smallest multiplier to the largest, rho over those
    means and rho over the episodes (with its p-value); see :mod:`timely_eval.anytime`.
    """
    rows = [r for r in rows if len(r["curve"]) >= 2]
    header = [
        "Policy",
        "Budgets",
        "Multipliers",
        "Tool calls",
        "rho calls",
        "rho calls (episodes, p)",
        "Gen tokens",
        "rho tokens",
        "rho tokens (episodes, p)",
    ]
    out = []
    for r in sorted(rows, key=lambda r: (r["protocol"], r["policy"])):
        cells = [r["policy"], protocol_label(r["protocol"])]
        cells.append(" / ".join(f"x{p['multiplier']:g}" for p in r["curve"]))
        for name, digits in (("tool_calls", 1), ("gen_tokens", 0)):
            eff = r["effort"][name]
            p_value = "" if eff["p_episodes"] is None else f" (p={eff['p_episodes']:.2g})"
            cells += [
                " / ".join(f"{p[name]:.{digits}f}" for p in r["curve"]),
                _fmt_rho(eff["rho"]),
                _fmt_rho(eff["rho_episodes"]) + p_value,
            ]
        out.append(cells)
    return header, out


def _with_pass_at_k(rows: list[dict[str, Any]]) -> bool:
    """Whether a table needs the pass@k column (a binary task played several epochs)."""
    return any(r.get("pass_at_k") is not None for r in rows)


def fmt_pass(row: dict[str, Any]) -> str:
    """'0.67 (k=3)', or '-' where pass@k does not apply."""
    value = row.get("pass_at_k")
    return "-" if value is None else f"{value:.2f} (k={row['epochs']})"


def cell_columns(family: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a family's detailed table (policy x latency x budget)."""
    header = [
        "Policy",
        "Latency",
        "Budget",
        "Budget s",
        "Score [95% CI]",
        "On time",
        "Raw score",
        "Mean s",
        "P95 s",
        "Tool calls",
        "Turns",
        "Gen tokens",
        "Gen / tool",
        "n",
    ]
    rows = [
        [
            r["policy"],
            latency_short(r["latency"]),
            r["budget"],
            f"{r['mean_budget_s']:.1f}",
            fmt_score(r),
            f"{r['compliance']:.0%}",
            f"{r['raw_score']:.2f}",
            f"{r['mean_elapsed_s']:.1f}",
            f"{r['p95_elapsed_s']:.1f}",
            f"{r['tool_calls']:.1f}",
            f"{r['turns']:.1f}",
            f"{r['gen_tokens']:.0f}",
            fmt_share(r),
            str(r["n"]),
        ]
        for r in family["cells"]
    ]
    if _with_pass_at_k(family["cells"]):
        header.insert(5, "Pass@k")
        for row, r in zip(rows, family["cells"], strict=True):
            row.insert(5, fmt_pass(r))
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The leaderboard as markdown: one section per family, then how to read it."""
    runs = ", ".join(
        f"`{r['name']}` ({r['suite'] or '?'}, {r['episodes']} episodes, budgets: "
        f"{_protocol_names(r.get('budget_protocols') or [])})"
        for r in report["runs"]
    )
    out = [
        "# Timely-Eval leaderboard",
        "",
        f"Runs: {runs}. Score = task score of answers given within the budget (late or "
        "missing answers score 0), mean with a 95% confidence interval; On time = share "
        "answered within the budget; Raw score ignores time; Gen / tool = share of time "
        "spent generating vs waiting on tools.",
        "",
    ]
    if plots and "score_vs_latency" in plots:
        out += [f"![on-time score vs tool latency]({plots['score_vs_latency']})", ""]
    for fam in report["families"]:
        out += [
            f"## {fam['family']}",
            "",
            f"Tasks: {', '.join(f'`{t}`' for t in fam['tasks'])} · budgets: "
            f"{', '.join(fam['budgets'])}",
            "",
            "Pooled over tasks and budgets; `@L` columns give the score at tool latency L ("
            + ", ".join(f"`{latency_short(x)}` = `{x}`" for x in fam["latencies"])
            + "; `~` marks a median).",
            "",
            _md_table(*overview_columns(fam)),
            "",
        ]
        out += _anytime_markdown(fam, plots or {})
        if plots and f"score_vs_latency_{fam['family']}" in plots:
            out += [
                f"![score vs latency, {fam['family']}]"
                f"({plots['score_vs_latency_' + fam['family']]})",
                "",
            ]
        out += [
            "<details><summary>By latency and budget</summary>",
            "",
            _md_table(*cell_columns(fam)),
            "",
            "</details>",
            "",
        ]
    if plots:
        out += (
            ["## Plots", ""]
            + [
                f"![{name}]({file})"
                for name, file in plots.items()
                if not name.startswith(("score_vs_latency", "anytime_", "effort_"))
            ]
            + [""]
        )
    return "\n".join(out)


def _protocol_names(protocols: list[str]) -> str:
    names = {"seconds": "seconds", "policy": "x own time", "oracle": "x oracle time"}
    return " + ".join(names.get(p, p) for p in protocols) or "?"


def anytime_note(fam: dict[str, Any]) -> str:
    """What the anytime numbers of a family mean, naming its budget protocols."""
    used = sorted({r["protocol"] for r in fam.get("anytime", []) if r["auc"] is not None})
    protocols = "; ".join(f"{protocol_label(p)} = {PROTOCOL_NOTES[p]}" for p in used)
    return (
        "AUC = area under the on-time score vs budget multiplier curve (trapezoid over the "
        "multipliers played, divided by their range: the curve's mean height, in [0, 1]); its "
        f"interval is over instances played at every multiplier. Budgets: {protocols}."
    )


def _anytime_markdown(fam: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """The anytime and Figure-3 sections of a family; nothing for a one-budget sweep."""
    anytime = [r for r in fam.get("anytime", []) if r["auc"] is not None]
    if not anytime:
        return []
    name = fam["family"]
    out = [
        f"### Anytime view: {name}",
        "",
        anytime_note(fam),
        "",
        _md_table(*anytime_columns(anytime)),
        "",
    ]
    if f"anytime_{name}" in plots:
        out += [f"![anytime, {name}]({plots['anytime_' + name]})", ""]
    tasks = [r for r in fam.get("anytime_tasks", []) if r["auc"] is not None]
    if len(fam["tasks"]) > 1 and tasks:
        out += [
            "<details><summary>Anytime by task</summary>",
            "",
            _md_table(*anytime_columns(tasks)),
            "",
            "</details>",
            "",
        ]
    out += [
        f"### Figure-3 view: {name}",
        "",
        "Mean tool calls and generated tokens per episode at each multiplier (smallest first) "
        "and Spearman's rank correlation with the multiplier: over those means, and over the "
        "episodes with its p-value. `-`: the count never changes, so no rank correlation.",
        "",
        _md_table(*effort_columns(fam["anytime"])),
        "",
    ]
    if f"effort_{name}" in plots:
        out += [f"![tool calls and tokens vs budget, {name}]({plots['effort_' + name]})", ""]
    return out


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    """A self-contained HTML page: inline CSS and JS, plots as data URIs."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["protocols"] = _protocol_names
    uris = {
        name: "data:image/png;base64," + base64.b64encode(data).decode()
        for name, data in images.items()
    }
    families = [
        {
            **fam,
            "overview_table": overview_columns(fam),
            "cell_table": cell_columns(fam),
            "plot": uris.get(f"score_vs_latency_{fam['family']}"),
            **_anytime_html(fam, uris),
        }
        for fam in report["families"]
    ]
    others = {
        k: v
        for k, v in uris.items()
        if not k.startswith(("score_vs_latency_", "anytime_", "effort_"))
    }
    return env.get_template("leaderboard.html.j2").render(
        report=report, families=families, plots=others
    )


def _anytime_html(fam: dict[str, Any], uris: dict[str, str]) -> dict[str, Any]:
    """The anytime and Figure-3 tables and plots of a family for the HTML template."""
    anytime = [r for r in fam.get("anytime", []) if r["auc"] is not None]
    if not anytime:
        return {"anytime_table": None}
    tasks = [r for r in fam.get("anytime_tasks", []) if r["auc"] is not None]
    return {
        "anytime_table": anytime_columns(anytime),
        "anytime_note": anytime_note(fam),
        "anytime_tasks_table": anytime_columns(tasks) if len(fam["tasks"]) > 1 and tasks else None,
        "effort_table": effort_columns(fam["anytime"]),
        "anytime_plot": uris.get(f"anytime_{fam['family']}"),
        "effort_plot": uris.get(f"effort_{fam['family']}"),
    }


def write_leaderboard(paths: list[str | Path], out: str | Path) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.html, results.json and PNG plots into ``out``.

    Args:
        paths: run directories.
        out: the report directory (created).

    Returns:
        Name -> path of every file written.
    """
    from timely_eval.plots import write_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = report_from_runs(paths)
    if not report["episodes"]:
        raise ConfigError(f"no eval episodes in {[str(p) for p in paths]}; nothing to report")
    pngs = write_plots(report, out)
    files: dict[str, Path] = {f"{name}.png": path for name, path in pngs.items()}
    (out / RESULTS).write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "leaderboard.md").write_text(
        render_markdown(report, {name: path.name for name, path in pngs.items()})
    )
    html = render_html(report, {name: path.read_bytes() for name, path in pngs.items()})
    (out / "leaderboard.html").write_text(html)
    for name in ("results.json", "leaderboard.md", "leaderboard.html"):
        files[name] = out / name
    return files
