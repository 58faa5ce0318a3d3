"""``timely compare RUN_A RUN_B``: did the change between two runs help?

Two runs of the same suite (before and after a code change, a new checkpoint, another prompt)
play the same episodes: the same task, seed, tool latency, budget and sample. Comparing them
pair by pair removes the variance between instances, which dominates eval noise, so a paired
interval on the per-episode differences (:func:`timely_eval.stats.paired_delta`) answers with far
fewer episodes than two independent means would. Per cell (policy × task × latency × budget, as
the leaderboard groups) and pooled per policy, the report gives B − A of the on-time score, of
compliance and of elapsed time, each with its 95% interval, the paired t-test's p-value and a
verdict. Runs that swept budget multipliers also compare the anytime AUC
(:mod:`timely_eval.anytime`) per policy, family and budget protocol, paired by instance (task,
seed, latency, sample played at the same multipliers in both runs). Policies pair by label;
two runs of one policy each pair even when their labels differ
(comparing two models). Writes ``compare.md``, a self-contained ``compare.html`` and
``compare.json``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from timely.errors import ConfigError
from timely.runrecord import read_run
from timely.types import Trajectory
from timely_eval.anytime import instance_aucs
from timely_eval.leaderboard import TEMPLATES, _md_table, latency_short
from timely_eval.metrics import FIELDS, on_time_score
from timely_eval.plan import budget_sort_key
from timely_eval.stats import CONFIDENCE, PairedDelta, paired_delta

# What makes two episodes the same episode. The difficulty is part of it: a suite may list one
# task id twice at two difficulties.
PAIR_FIELDS = ("task", "difficulty", "seed", "latency", "budget", "sample")
CELL_FIELDS = ("policy", "task", "latency", "budget")
TERMINAL_ROWS = 12  # cells printed on the terminal; the files hold them all
_WIDE_ONLY = ("Score A", "Score B", "p", "Δ on time")


def _pair_key(t: Trajectory) -> tuple[Any, ...]:
    return (
        t.task_id,
        str(t.metadata.get("difficulty", "")),
        t.seed,
        t.latency,
        FIELDS["budget"](t),
        t.sample,
    )


def _values(trajs: Sequence[Trajectory], field: str) -> list[str]:
    get = FIELDS.get(field) or (lambda t: str(getattr(t, field)))
    return sorted({str(get(t)) for t in trajs})


def _policy_pairs(a: list[Trajectory], b: list[Trajectory]) -> list[tuple[str, str]]:
    la, lb = _values(a, "policy"), _values(b, "policy")
    shared = [p for p in la if p in lb]
    if shared:
        return [(p, p) for p in shared]
    if len(la) == 1 and len(lb) == 1:
        return [(la[0], lb[0])]  # one policy each: the comparison is between them
    raise ConfigError(
        f"the runs share no policy: A has {', '.join(la)}; B has {', '.join(lb)}. Compare runs "
        "of the same suite policies, or runs of one policy each"
    )


def _nothing_shared(a: list[Trajectory], b: list[Trajectory]) -> ConfigError:
    lines = []
    for field in ("task", "seed", "latency", "budget", "sample"):
        va, vb = _values(a, field), _values(b, field)
        if not set(va) & set(vb):
            lines.append(f"{field}: A {', '.join(va[:8])}; B {', '.join(vb[:8])}")
    detail = "; ".join(lines) or "their task, seed, latency and budget combinations differ"
    return ConfigError(
        f"the runs share no episode (same task, seed, latency, budget and sample): {detail}. "
        "Run the same suite (or --tasks / seeds) for both"
    )


def _delta_row(pairs: list[tuple[Trajectory, Trajectory]]) -> dict[str, Any]:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    score = paired_delta(
        [on_time_score(t) for t in a], [on_time_score(t) for t in b], bounds=(-1, 1)
    )
    comp = paired_delta(
        [float(t.compliant) for t in a], [float(t.compliant) for t in b], bounds=(-1, 1)
    )
    time = paired_delta([t.elapsed_s for t in a], [t.elapsed_s for t in b])
    return {
        "n": score.n,
        "score_a": score.mean_a,
        "score_b": score.mean_b,
        "delta": score.delta,
        "lo": score.lo,
        "hi": score.hi,
        "p_value": score.p_value,
        "method": score.method,
        "verdict": verdict(score),
        "compliance_a": comp.mean_a,
        "compliance_b": comp.mean_b,
        "compliance_delta": comp.delta,
        "compliance_lo": comp.lo,
        "compliance_hi": comp.hi,
        "elapsed_a": time.mean_a,
        "elapsed_b": time.mean_b,
        "elapsed_delta": time.delta,
        "elapsed_lo": time.lo,
        "elapsed_hi": time.hi,
    }


def verdict(d: PairedDelta) -> str:
    """A word for a score difference: better, worse, no clear change, same, one pair."""
    if d.n < 2:
        return "one pair"
    if d.method == "constant":
        if d.delta == 0:
            return "same"
        return ("better" if d.delta > 0 else "worse") + " (every pair)"
    if d.significant:
        return "better" if d.delta > 0 else "worse"
    return "no clear change"


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Every number of a comparison of run B against run A, as one JSON-safe dict.

    Raises:
        ConfigError: a path is not a run, or the runs share no policy or no episode.
    """
    a, b = read_run(run_a), read_run(run_b)
    for path, trajs in ((run_a, a), (run_b, b)):
        if not trajs:
            raise ConfigError(f"{path} holds no episodes to compare")
    notes = []
    clocks_a, clocks_b = _values(a, "clock"), _values(b, "clock")
    if clocks_a != clocks_b:
        notes.append(
            f"A ran on a {'/'.join(clocks_a)} clock and B on {'/'.join(clocks_b)}: times differ "
            "by how they were measured, not only by the change"
        )
    cells: dict[tuple[str, ...], list[tuple[Trajectory, Trajectory]]] = defaultdict(list)
    overall: dict[str, list[tuple[Trajectory, Trajectory]]] = defaultdict(list)
    unmatched = {"a_only": 0, "b_only": 0, "duplicates": 0}
    anytime: list[dict[str, Any]] = []
    for pa_label, pb_label in _policy_pairs(a, b):
        name = pa_label if pa_label == pb_label else f"{pa_label} → {pb_label}"
        anytime += _auc_rows(
            name,
            [t for t in a if FIELDS["policy"](t) == pa_label],
            [t for t in b if FIELDS["policy"](t) == pb_label],
        )
        index: dict[str, dict[tuple[Any, ...], Trajectory]] = {"a": {}, "b": {}}
        for side, trajs, label in (("a", a, pa_label), ("b", b, pb_label)):
            for t in trajs:
                if FIELDS["policy"](t) != label:
                    continue
                key = _pair_key(t)
                if key in index[side]:
                    unmatched["duplicates"] += 1  # the same episode twice in one run: keep one
                    continue
                index[side][key] = t
        shared = [k for k in index["a"] if k in index["b"]]
        unmatched["a_only"] += len(index["a"]) - len(shared)
        unmatched["b_only"] += len(index["b"]) - len(shared)
        for key in shared:
            pair = (index["a"][key], index["b"][key])
            task, _, _, latency, budget, _ = key
            cells[(name, task, latency, budget)].append(pair)
            overall[name].append(pair)
    if not overall:
        raise _nothing_shared(a, b)
    latency_rank = {s: i for i, s in enumerate(sorted({k[2] for k in cells}))}
    cell_rows = [
        {**dict(zip(CELL_FIELDS, key, strict=True)), **_delta_row(pairs)}
        for key, pairs in sorted(
            cells.items(),
            key=lambda kv: (kv[0][0], kv[0][1], latency_rank[kv[0][2]], budget_sort_key(kv[0][3])),
        )
    ]
    return {
        "a": {"name": _run_name(run_a), "path": str(run_a), "episodes": len(a)},
        "b": {"name": _run_name(run_b), "path": str(run_b), "episodes": len(b)},
        "confidence": CONFIDENCE,
        "paired_on": list(PAIR_FIELDS),
        "notes": notes,
        "unmatched": unmatched,
        "overall": [{"policy": name, **_delta_row(pairs)} for name, pairs in overall.items()],
        "cells": cell_rows,
        "anytime": anytime,
    }


def _auc_rows(name: str, a: list[Trajectory], b: list[Trajectory]) -> list[dict[str, Any]]:
    """B - A of the anytime AUC per family and protocol, paired by instance.

    An instance pairs when both runs played it at the same multipliers; a paired t interval on
    the instance AUC differences (bounded by [-1, 1]) says whether the curve moved.
    """
    ia, ib = instance_aucs(a), instance_aucs(b)
    groups: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for key, (ms, auc_a) in ia.items():
        other = ib.get(key)
        if other is not None and other[0] == ms:
            groups[(key[0], key[1])].append((auc_a, other[1]))
    rows = []
    for (family, protocol), pairs in sorted(groups.items()):
        d = paired_delta([p[0] for p in pairs], [p[1] for p in pairs], bounds=(-1, 1))
        rows.append(
            {
                "policy": name,
                "family": family,
                "protocol": protocol,
                "n": d.n,
                "auc_a": d.mean_a,
                "auc_b": d.mean_b,
                "delta": d.delta,
                "lo": d.lo,
                "hi": d.hi,
                "p_value": d.p_value,
                "method": d.method,
                "verdict": verdict(d),
            }
        )
    return rows


def auc_columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the anytime AUC comparison (pooled per policy, family, protocol)."""
    header = ["Policy", "Family", "Budgets", "Instances", "AUC A", "AUC B", "Δ AUC [95% CI]"]
    header += ["p", "Verdict"]
    out = [
        [
            r["policy"],
            r["family"],
            "x own time" if r["protocol"] == "policy" else f"x {r['protocol']} time",
            str(r["n"]),
            f"{r['auc_a']:.2f}",
            f"{r['auc_b']:.2f}",
            fmt_delta(r),
            "-" if r["p_value"] is None else f"{r['p_value']:.3g}",
            r["verdict"],
        ]
        for r in rows
    ]
    return header, out


def _run_name(path: str | Path) -> str:
    p = Path(path)
    return (p if p.is_dir() else p.parent).name


# ---- rendering ---------------------------------------------------------------------------------


def _num(x: float | None, fmt: str = "+.2f") -> str:
    return "-" if x is None else format(x, fmt)


def fmt_delta(row: dict[str, Any], prefix: str = "", fmt: str = "+.2f") -> str:
    d, lo, hi = row[f"{prefix}delta"], row[f"{prefix}lo"], row[f"{prefix}hi"]
    if lo is None or hi is None or lo == hi:  # no interval, or no spread to make one from
        return _num(d, fmt)
    return f"{_num(d, fmt)} [{_num(lo, fmt)}, {_num(hi, fmt)}]"


def columns(rows: list[dict[str, Any]], *, cells: bool) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a comparison table (pooled rows, or cells with their fields)."""
    head = ["Policy", *(["Task", "Latency", "Budget"] if cells else [])]
    header = [
        *head,
        "n",
        "Score A",
        "Score B",
        "Δ score [95% CI]",
        "p",
        "Verdict",
        "Δ on time",
        "Δ mean s",
    ]
    out = []
    for r in rows:
        lead = [
            r["policy"],
            *([r["task"], latency_short(r["latency"]), r["budget"]] if cells else []),
        ]
        out.append(
            [
                *lead,
                str(r["n"]),
                f"{r['score_a']:.2f}",
                f"{r['score_b']:.2f}",
                fmt_delta(r),
                "-" if r["p_value"] is None else f"{r['p_value']:.3g}",
                r["verdict"],
                fmt_delta(r, "compliance_", "+.0%"),
                fmt_delta(r, "elapsed_", "+.1f"),
            ]
        )
    return header, out


def _intro(report: dict[str, Any]) -> str:
    a, b, u = report["a"], report["b"], report["unmatched"]
    return (
        f"B = `{b['name']}` ({b['episodes']} episodes) against A = `{a['name']}` "
        f"({a['episodes']} episodes), on the episodes both played (same "
        f"{', '.join(report['paired_on'])}); {u['a_only']} only in A, {u['b_only']} only in B. "
        "Δ = B − A of the on-time score, with a 95% paired t interval and its p-value; "
        "Δ on time = change in compliance; Δ mean s = change in elapsed time (negative: faster). "
        "Verdict: better / worse when the interval excludes 0; 'every pair' when all pairs "
        "changed alike (no spread, so no interval)."
    )


def render_markdown(report: dict[str, Any]) -> str:
    out = ["# Timely-Eval comparison", "", _intro(report), ""]
    out += [f"> {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    out += ["## Pooled per policy", "", _md_table(*columns(report["overall"], cells=False)), ""]
    if report.get("anytime"):
        out += [
            "## Anytime AUC",
            "",
            "B − A of the area under the on-time score vs budget multiplier curve "
            "(docs/timely-eval.md), paired by instance played at the same multipliers in both "
            "runs.",
            "",
            _md_table(*auc_columns(report["anytime"])),
            "",
        ]
    out += ["## Per cell", "", _md_table(*columns(report["cells"], cells=True)), ""]
    return "\n".join(out)


def render_html(report: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True
    )
    return env.get_template("compare.html.j2").render(
        report=report,
        intro=_intro(report),
        overall=columns(report["overall"], cells=False),
        cells=columns(report["cells"], cells=True),
        anytime=auc_columns(report["anytime"]) if report.get("anytime") else None,
    )


def write_compare(run_a: str | Path, run_b: str | Path, out: str | Path) -> dict[str, Path]:
    """Write compare.md, compare.html and compare.json of B against A into ``out``."""
    report = compare_runs(run_a, run_b)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("compare.json", "compare.md", "compare.html")}
    files["compare.json"].write_text(json.dumps(report, indent=1) + "\n")
    files["compare.md"].write_text(render_markdown(report))
    files["compare.html"].write_text(render_html(report))
    return files


def compare_command(console: Any, run_a: Path, run_b: Path, out: Path | None) -> dict[str, Any]:
    """``timely compare``: write the files and print the pooled rows and the largest changes."""
    from rich.table import Table

    out = out or Path("reports") / f"compare-{_run_name(run_a)}-vs-{_run_name(run_b)}"
    files = write_compare(run_a, run_b, out)
    report = json.loads(files["compare.json"].read_text())
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    biggest = sorted(report["cells"], key=lambda r: -abs(r["delta"]))[:TERMINAL_ROWS]
    for title, rows, cells in (
        (
            f"B ({report['b']['name']}) − A ({report['a']['name']}), pooled",
            report["overall"],
            False,
        ),
        (f"largest changes of {len(report['cells'])} cells", biggest, True),
    ):
        header, body = columns(rows, cells=cells)
        if console.width < 150:  # a narrow terminal keeps the score columns; the files hold all
            keep = [i for i, h in enumerate(header) if h not in _WIDE_ONLY]
            header, body = [header[i] for i in keep], [[r[i] for i in keep] for r in body]
        table = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i < (4 if cells else 1) else "right")
        for row in body:
            table.add_row(*row)
        console.print(table)
    console.print(f"wrote {files['compare.md']}, compare.html, compare.json")
    return report
