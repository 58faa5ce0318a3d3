"""The results page of a training run's held-out eval: issue 20's protocol, measured.

Issue 20 asks one question: does RL with the time reward make the model budget-aware beyond
SFT, beyond RL without the time reward, and beyond a budget-tracker prompt? The page answers it
from the trajectories alone (``timely-rl results`` regenerates it), per budget protocol (the
shared oracle reference, ``x2@oracle``, and each policy's own time, ``x2``; never pooled):

* per (policy, family, budget) point: on-time score with its interval, on-time rate with the
  run's slack (1.1 x T for math) and without it, elapsed, tool calls, generated tokens;
* the anytime view (:mod:`timely_eval.anytime`): AUC of on-time score against the multiplier per
  policy and family, with the Figure-3 rank correlations of tool calls and tokens;
* paired differences between rows (same task, seed, latency, budget: per episode for the
  on-time score, per instance for the AUC), since instance variance dominates eval noise;
* a Targets table stating each of the issue's targets with the measured value and met/missed
  (or "not measured" where a row was not played), so a miss is reported, never left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from timely.types import Trajectory
from timely_eval.anytime import PROTOCOL_NOTES, anytime_rows, instance_aucs
from timely_eval.compare import _pair_key
from timely_eval.metrics import FIELDS, cell_metrics, on_time_score
from timely_eval.plan import budget_sort_key, parse_budget
from timely_eval.stats import PairedDelta, paired_delta, rate_ci

# The rows issue 20 compares, in the order the page shows them.
ROW_ORDER = ("base", "base+tracker", "sft", "sft+tracker", "rl", "rl-notime")
# (B, A) pairs whose B - A the page reports.
PAIRS = (
    ("sft", "base"),
    ("rl", "sft"),
    ("rl", "rl-notime"),
    ("rl-notime", "base"),
    ("rl", "base+tracker"),
    ("rl", "sft+tracker"),
    ("base+tracker", "base"),
    ("sft+tracker", "sft"),
)
TRACKERS = ("base+tracker", "sft+tracker")
RHO_TARGET = 0.8  # RL's tool calls against the multiplier, per family
RHO_GAP = 0.3  # "RL-notime's much less": its rho at least this far below RL's


def label_of(t: Trajectory) -> str:
    return FIELDS["policy"](t)


def on_time_strict(t: Trajectory) -> bool:
    """On time without the slack: answered within the budget itself (``compliant`` allows the
    family's slack, 1.1 x T for math)."""
    return bool(t.compliant and t.elapsed_s <= t.budget_s + 1e-9)


def by_protocol(trajs: Iterable[Trajectory]) -> dict[str, list[Trajectory]]:
    """Episodes at multiplier budgets, by protocol (``oracle`` first, then ``policy``)."""
    out: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        parsed = parse_budget(FIELDS["budget"](t))
        if parsed is not None:
            out[parsed[0]].append(t)
    return {p: out[p] for p in ("oracle", "policy") if out.get(p)}


def _multiplier(t: Trajectory) -> float:
    parsed = parse_budget(FIELDS["budget"](t))
    return parsed[1] if parsed is not None else float("nan")


def _row_key(label: str) -> tuple[int, str]:
    return (ROW_ORDER.index(label) if label in ROW_ORDER else len(ROW_ORDER), label)


def point_rows(trajs: Sequence[Trajectory], keys: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`~timely_eval.metrics.cell_metrics` per group of ``keys`` plus the strict rate."""
    groups: dict[tuple[str, ...], list[Trajectory]] = defaultdict(list)
    for t in trajs:
        groups[tuple(FIELDS[k](t) for k in keys)].append(t)

    def order(key: tuple[str, ...]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for k, v in zip(keys, key, strict=True):
            parts.append(
                _row_key(v) if k == "policy" else budget_sort_key(v) if k == "budget" else v
            )
        return tuple(parts)

    rows = []
    for key in sorted(groups, key=order):
        group = groups[key]
        strict = sum(on_time_strict(t) for t in group)
        ci = rate_ci(strict, len(group))
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                **cell_metrics(group),
                "strict": strict / len(group),
                "strict_lo": ci.lo,
                "strict_hi": ci.hi,
            }
        )
    return rows


def _of(trajs: Iterable[Trajectory], label: str, family: str | None = None) -> list[Trajectory]:
    return [
        t
        for t in trajs
        if label_of(t) == label and (family is None or FIELDS["family"](t) == family)
    ]


def paired_scores(trajs: Sequence[Trajectory], b: str, a: str, family: str) -> PairedDelta | None:
    """B - A of the on-time score over the episodes both rows played (same task, difficulty,
    seed, latency, budget label and sample); None where they share none."""
    ea = {_pair_key(t): on_time_score(t) for t in _of(trajs, a, family)}
    eb = {_pair_key(t): on_time_score(t) for t in _of(trajs, b, family)}
    shared = sorted(set(ea) & set(eb), key=str)
    if not shared:
        return None
    return paired_delta([ea[k] for k in shared], [eb[k] for k in shared], bounds=(-1, 1))


def paired_aucs(trajs: Sequence[Trajectory], b: str, a: str, family: str) -> PairedDelta | None:
    """B - A of the anytime AUC over the instances both rows played at the same multipliers
    (one protocol's episodes); None where they share none."""
    ia = {k: v for k, v in instance_aucs(_of(trajs, a, family)).items()}
    ib = instance_aucs(_of(trajs, b, family))
    pairs = [
        (v[1], ib[k][1]) for k, v in sorted(ia.items(), key=str) if k in ib and ib[k][0] == v[0]
    ]
    if not pairs:
        return None
    return paired_delta([p[0] for p in pairs], [p[1] for p in pairs], bounds=(-1, 1))


@dataclass(frozen=True)
class Target:
    """One of issue 20's targets under one budget protocol.

    Attributes:
        target: what is wanted, in words.
        protocol: ``oracle`` (shared reference) or ``policy`` (per-policy).
        measured: what the run measured.
        met: True or False; None where the rows it needs were not played.
    """

    target: str
    protocol: str
    measured: str
    met: bool | None


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def fmt_delta(d: PairedDelta | None) -> str:
    if d is None:
        return "—"
    interval = f" [{_fmt(d.lo, '+.3f')}, {_fmt(d.hi, '+.3f')}]" if d.lo is not None else ""
    return f"{d.delta:+.3f}{interval} (n={d.n})"


def target_checks(trajs: Sequence[Trajectory]) -> list[Target]:
    """Every target of issue 20 under each protocol played, measured (see the module doc)."""
    out: list[Target] = []
    for protocol, group in by_protocol(trajs).items():
        rows = anytime_rows(group, by=("policy", "family"))
        auc = {(r["policy"], r["family"]): r for r in rows if r.get("auc") is not None}
        labels = {label_of(t) for t in group}
        families = sorted({FIELDS["family"](t) for t in group})
        for family in families:
            out += _auc_order(auc, family, protocol, ("rl", "sft", "base"))
            out += _auc_order(auc, family, protocol, ("rl", "rl-notime", "base"))
            d = paired_aucs(group, "rl", "sft", family) if {"rl", "sft"} <= labels else None
            out.append(
                Target(
                    f"paired AUC interval separates RL from SFT ({family})",
                    protocol,
                    f"RL - SFT {fmt_delta(d)}" if d else "not measured (no rl or sft row)",
                    None if d is None else bool(d.lo is not None and d.lo > 0),
                )
            )
        out += _on_time_targets(group, protocol, labels)
        for family in families:
            out += _effort_targets(auc, family, protocol)
            out.append(_beats_trackers(auc, family, protocol))
    return out


def _auc_order(
    auc: dict[tuple[str, str], dict[str, Any]], family: str, protocol: str, order: tuple[str, ...]
) -> list[Target]:
    name = (
        f"anytime AUC {' > '.join(o.upper() if o != 'rl-notime' else 'RL-notime' for o in order)}"
    )
    name = name.replace("BASE", "base") + f" ({family})"
    missing = [o for o in order if (o, family) not in auc]
    if missing:
        return [Target(name, protocol, f"not measured (no {', '.join(missing)} row)", None)]
    values = [auc[(o, family)]["auc"] for o in order]
    met = all(values[i] > values[i + 1] for i in range(len(values) - 1))
    measured = " / ".join(f"{o} {v:.3f}" for o, v in zip(order, values, strict=True))
    return [Target(name, protocol, measured, met)]


def _on_time_targets(group: Sequence[Trajectory], protocol: str, labels: set[str]) -> list[Target]:
    rl = _of(group, "rl")

    def rate(keep: Callable[[float], bool]) -> tuple[float, int]:
        ts = [t for t in rl if keep(_multiplier(t))]
        return (float(np.mean([on_time_strict(t) for t in ts])) if ts else float("nan"), len(ts))

    out = []
    for name, keep, floor in (
        ("RL on-time rate >= 95% at >= 1x, without slack", lambda m: m >= 1.0, 0.95),
        ("RL on-time rate >= 75% at 0.5x, without slack", lambda m: m == 0.5, 0.75),
    ):
        value, n = rate(keep)
        if "rl" not in labels or n == 0:
            out.append(Target(name, protocol, "not measured (no rl episodes there)", None))
        else:
            out.append(Target(name, protocol, f"{value:.0%} of {n}", value >= floor))
    return out


def _rho(auc: dict[tuple[str, str], dict[str, Any]], label: str, family: str) -> float | None:
    row = auc.get((label, family))
    return None if row is None else row["effort"]["tool_calls"]["rho"]


def _effort_targets(
    auc: dict[tuple[str, str], dict[str, Any]], family: str, protocol: str
) -> list[Target]:
    name = f"RL's tool calls rise with the budget: rho >= {RHO_TARGET} ({family})"
    if ("rl", family) not in auc:
        return [Target(name, protocol, "not measured (no rl row)", None)]
    rho = _rho(auc, "rl", family)
    out = [
        Target(name, protocol, f"rho {_fmt(rho, '+.2f')}", rho is not None and rho >= RHO_TARGET)
    ]
    name = f"RL-notime's rise much less: rho at least {RHO_GAP} below RL's ({family})"
    if ("rl-notime", family) not in auc:
        return [*out, Target(name, protocol, "not measured (no rl-notime row)", None)]
    other = _rho(auc, "rl-notime", family)
    # A constant count has no rank correlation: it does not rise at all (0).
    gap = (rho or 0.0) - (other or 0.0)
    measured = f"RL {_fmt(rho, '+.2f')}, RL-notime {_fmt(other, '+.2f')}"
    return [*out, Target(name, protocol, measured, gap >= RHO_GAP)]


def _beats_trackers(
    auc: dict[tuple[str, str], dict[str, Any]], family: str, protocol: str
) -> Target:
    name = f"RL beats the budget-tracker prompt rows on AUC ({family})"
    trackers = [t for t in TRACKERS if (t, family) in auc]
    if ("rl", family) not in auc or not trackers:
        return Target(name, protocol, "not measured (no rl or tracker row)", None)
    rl = auc[("rl", family)]["auc"]
    others = {t: auc[(t, family)]["auc"] for t in trackers}
    measured = f"rl {rl:.3f} vs " + ", ".join(f"{t} {v:.3f}" for t, v in others.items())
    return Target(name, protocol, measured, all(rl > v for v in others.values()))


def targets_table(trajs: Sequence[Trajectory]) -> list[str]:
    rows = ["| target | budgets | measured | met |", "|---|---|---|---|"]
    for t in target_checks(trajs):
        met = "not measured" if t.met is None else "met" if t.met else "missed"
        rows.append(f"| {t.target} | {_protocol_name(t.protocol)} | {t.measured} | {met} |")
    return rows


def _protocol_name(protocol: str) -> str:
    return "shared (oracle)" if protocol == "oracle" else "per-policy"


def points_table(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    head = [*keys, "n", "on-time score [95% CI]", "on-time (slack)", "on-time (strict)"]
    head += ["elapsed s", "budget s", "tool calls", "gen tokens"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[k]) for k in keys] + [
            str(r["n"]),
            f"{r['score']:.2f} [{r['score_lo']:.2f}, {r['score_hi']:.2f}]",
            f"{r['compliance']:.0%}",
            f"{r['strict']:.0%}",
            f"{r['mean_elapsed_s']:.1f}",
            f"{r['mean_budget_s']:.1f}",
            f"{r['tool_calls']:.1f}",
            f"{r['gen_tokens']:.0f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def anytime_table(group: Sequence[Trajectory]) -> list[str]:
    """AUC per policy and family with the Figure-3 rank correlations (one protocol)."""
    head = ["policy", "family", "AUC [95% CI]", "instances", "on-time score by multiplier"]
    head += ["tool calls by multiplier", "rho tool calls", "rho tokens"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = anytime_rows(group, by=("policy", "family"))
    for r in sorted(rows, key=lambda r: (_row_key(r["policy"]), r["family"])):
        curve = r["curve"]
        interval = f" [{_fmt(r['auc_lo'])}, {_fmt(r['auc_hi'])}]" if r["auc_lo"] is not None else ""
        cells = [
            r["policy"],
            r["family"],
            f"{_fmt(r['auc'])}{interval}",
            str(r["instances"]),
            " / ".join(f"{p['multiplier']:g}x {p['score']:.2f}" for p in curve),
            " / ".join(f"{p['tool_calls']:.1f}" for p in curve),
            _fmt(r["effort"]["tool_calls"]["rho"], "+.2f"),
            _fmt(r["effort"]["gen_tokens"]["rho"], "+.2f"),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def pairs_table(group: Sequence[Trajectory]) -> list[str]:
    """B - A of on-time score (per episode) and AUC (per instance) for the rows played."""
    labels = {label_of(t) for t in group}
    families = sorted({FIELDS["family"](t) for t in group})
    out = [
        "| B − A | family | Δ on-time score [95% CI] | Δ AUC [95% CI] |",
        "|---|---|---|---|",
    ]
    for b, a in PAIRS:
        if not {a, b} <= labels:
            continue
        for family in families:
            score, auc = paired_scores(group, b, a, family), paired_aucs(group, b, a, family)
            out.append(f"| {b} − {a} | {family} | {fmt_delta(score)} | {fmt_delta(auc)} |")
    return out if len(out) > 2 else []


def thin_points(trajs: Sequence[Trajectory], min_points: int) -> list[str]:
    """The (policy, family, budget) points with fewer than ``min_points`` episodes."""
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for t in trajs:
        if parse_budget(FIELDS["budget"](t)) is not None:
            counts[(label_of(t), FIELDS["family"](t), FIELDS["budget"](t))] += 1
    return [f"{p} {f} {b} ({n})" for (p, f, b), n in sorted(counts.items()) if n < min_points]


def protocol_sections(trajs: Sequence[Trajectory]) -> list[str]:
    """Per protocol: the note, the points table, the anytime table and the paired table."""
    lines: list[str] = []
    for protocol, group in by_protocol(trajs).items():
        title = "one shared reference" if protocol == "oracle" else "per-policy reference"
        lines += [
            f"## Budgets relative to {title} ({'x2@oracle' if protocol == 'oracle' else 'x2'})",
            "",
            f"Budgets are {PROTOCOL_NOTES[protocol]}.",
            "",
            "### By policy, family and budget (pooled over tasks and latencies)",
            "",
            *points_table(
                point_rows(group, ("policy", "family", "budget")), ("policy", "family", "budget")
            ),
            "",
            "### Anytime AUC and the Figure-3 rank correlations",
            "",
            *anytime_table(group),
            "",
        ]
        pairs = pairs_table(group)
        if pairs:
            lines += ["### Paired differences", "", *pairs, ""]
    return lines


def plot_figure3(trajs: Sequence[Trajectory], path: Any) -> None:
    """Generated tokens, tool calls and on-time score against the multiplier, one row of plots
    per protocol, a line per policy (the paper's Figure 3 and the anytime curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = by_protocol(trajs)
    fig, axes = plt.subplots(
        max(1, len(protocols)), 3, figsize=(13, 3.8 * max(1, len(protocols))), squeeze=False
    )
    metrics: tuple[tuple[str, Callable[[Trajectory], float]], ...] = (
        ("generated tokens", lambda t: float(sum(s.completion_tokens for s in t.steps))),
        ("tool calls", lambda t: float(t.n_tool_calls)),
        ("on-time score", on_time_score),
    )
    for row, (protocol, group) in zip(axes, protocols.items(), strict=False):
        by: dict[str, dict[float, list[Trajectory]]] = defaultdict(lambda: defaultdict(list))
        for t in group:
            by[label_of(t)][_multiplier(t)].append(t)
        for ax, (name, fn) in zip(row, metrics, strict=True):
            for label in sorted(by, key=_row_key):
                xs = sorted(by[label])
                ys = [float(np.mean([fn(t) for t in by[label][x]])) for x in xs]
                ax.plot(xs, ys, marker="o", label=label)
            ax.set_xlabel(f"budget multiplier ({_protocol_name(protocol)})")
            ax.set_title(name)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
