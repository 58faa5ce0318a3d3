"""Leaderboard plots (matplotlib PNG), drawn from the report dict of :mod:`leaderboard`.

The key figure is on-time score vs tool latency, one line per policy: the paper's claim is that
small fast models win with fast tools (more interactions fit in the budget) and large slow models
with slow tools (each interaction counts more), so the lines cross. Next to it: compliance vs
budget (untrained policies ignore their budgets at every size) and where the time went
(generation vs waiting on tools). A sweep over budget multipliers adds the anytime curves (on-time
score vs multiplier, AUC in the legend) and the paper's Figure 3 (tool calls and generated tokens
vs multiplier). Figures use matplotlib's object API with the Agg canvas, so
drawing never touches pyplot's global state or a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from timely_eval.plan import budget_sort_key

GEN_COLOR, TOOL_COLOR = "#4C72B0", "#DD8452"
_PALETTE = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]


def _style(label: str, policies: list[str]) -> dict[str, Any]:
    i = policies.index(label) if label in policies else 0
    return {"color": _PALETTE[i % len(_PALETTE)], "marker": _MARKERS[i % len(_MARKERS)]}


def _all_policies(report: dict[str, Any]) -> list[str]:
    return sorted({r["policy"] for fam in report["families"] for r in fam["overview"]})


def _grid(n: int, *, width: float = 5.2, height: float = 3.8) -> tuple[Figure, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _latency_axis(ax: Any, report: dict[str, Any], specs: list[str]) -> dict[str, float]:
    """Place latencies on x: log seconds when all are known and spread, else evenly spaced."""
    from timely_eval.leaderboard import latency_short

    values = {s: report["latency_values"].get(s, float("nan")) for s in specs}
    numeric = all(math.isfinite(v) and v > 0 for v in values.values())
    if numeric and len(specs) > 1 and max(values.values()) / min(values.values()) >= 4:
        ax.set_xscale("log")
        pos = values
    elif numeric:
        pos = values
    else:
        pos = {s: float(i) for i, s in enumerate(specs)}
    ax.set_xticks([pos[s] for s in specs], [latency_short(s) for s in specs])
    ax.minorticks_off()
    ax.set_xlabel("tool latency per call")
    return pos


def _legend(fig: Figure, axes: list[Any]) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    if handles:
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside lower center",
            ncols=min(len(labels), 4),
            frameon=False,
        )


def _score_lines(
    ax: Any,
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    specs: list[str],
    policies: list[str],
    title: str,
) -> None:
    pos = _latency_axis(ax, report, specs)
    for policy in sorted({r["policy"] for r in rows}):
        pts = sorted((pos[r["latency"]], r) for r in rows if r["policy"] == policy)
        xs = [x for x, _ in pts]
        style = _style(policy, policies)
        ax.plot(xs, [r["score"] for _, r in pts], label=policy, lw=2, ms=6, **style)
        ax.fill_between(
            xs,
            [r["score_lo"] for _, r in pts],
            [r["score_hi"] for _, r in pts],
            color=style["color"],
            alpha=0.10,
            lw=0,
        )
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("on-time score")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_score_vs_latency(report: dict[str, Any], path: Path) -> Path:
    """One panel per family: on-time score vs tool latency, pooled over budgets."""
    fams = report["families"]
    fig, axes = _grid(len(fams))
    policies = _all_policies(report)
    for ax, fam in zip(axes, fams, strict=True):
        _score_lines(
            ax,
            report,
            fam["by_latency"],
            fam["latencies"],
            policies,
            f"{fam['family']} (all budgets)",
        )
    fig.suptitle("On-time score vs tool latency (shaded: 95% CI)", fontweight="bold")
    _legend(fig, axes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_family_by_budget(report: dict[str, Any], fam: dict[str, Any], path: Path) -> Path:
    """One family: one panel per budget, on-time score vs tool latency."""
    budgets = fam["budgets"]
    fig, axes = _grid(len(budgets), width=4.4, height=3.4)
    policies = _all_policies(report)
    for ax, budget in zip(axes, budgets, strict=True):
        rows = [r for r in fam["cells"] if r["budget"] == budget]
        _score_lines(ax, report, rows, fam["latencies"], policies, f"budget {budget}")
    fig.suptitle(f"{fam['family']}: on-time score vs tool latency, by budget", fontweight="bold")
    _legend(fig, axes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_compliance_vs_budget(report: dict[str, Any], path: Path) -> Path:
    """One panel per family: share of episodes answered on time, by budget."""
    fams = report["families"]
    fig, axes = _grid(len(fams))
    policies = _all_policies(report)
    for ax, fam in zip(axes, fams, strict=True):
        budgets = sorted(fam["budgets"], key=budget_sort_key)
        x = {b: i for i, b in enumerate(budgets)}
        for policy in sorted({r["policy"] for r in fam["by_budget"]}):
            rows = sorted(
                (x[r["budget"]], r["compliance"]) for r in fam["by_budget"] if r["policy"] == policy
            )
            ax.plot(
                [a for a, _ in rows],
                [c for _, c in rows],
                label=policy,
                lw=2,
                ms=6,
                **_style(policy, policies),
            )
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_xlabel("budget (s = seconds, x = multiple of calibrated time)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("answered on time")
        ax.set_title(fam["family"])
        ax.grid(alpha=0.3)
    fig.suptitle("Budget compliance vs budget (all latencies)", fontweight="bold")
    _legend(fig, axes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_time_breakdown(report: dict[str, Any], path: Path) -> Path:
    """One panel per family: mean seconds per episode spent generating vs in tools."""
    fams = report["families"]
    n_pol = max(len(f["overview"]) for f in fams)
    fig, axes = _grid(len(fams), height=max(2.6, 0.45 * n_pol + 1.4))
    for ax, fam in zip(axes, fams, strict=True):
        rows = sorted(fam["overview"], key=lambda r: r["policy"], reverse=True)
        labels = [r["policy"] for r in rows]
        gen = [r["mean_gen_s"] for r in rows]
        tool = [r["mean_tool_s"] for r in rows]
        ax.barh(labels, gen, color=GEN_COLOR, label="generation")
        ax.barh(labels, tool, left=gen, color=TOOL_COLOR, label="tools")
        for i, r in enumerate(rows):
            total = r["mean_gen_s"] + r["mean_tool_s"]
            share = f"  {total:.1f}s" + (
                f" ({r['gen_share']:.0%} gen)" if r["gen_share"] is not None else ""
            )
            ax.text(total, i, share, va="center", fontsize=8)
        ax.set_xlim(0, max([g + t for g, t in zip(gen, tool, strict=True)] + [1e-9]) * 1.45)
        ax.set_xlabel("mean seconds per episode")
        ax.set_title(fam["family"])
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        "Where the time goes: generation vs tools (all latencies and budgets)", fontweight="bold"
    )
    _legend(fig, axes[:1])
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _series_label(row: dict[str, Any], protocols: set[str]) -> str:
    """A policy's legend label; the protocol is named when a family mixes both."""
    return row["policy"] if len(protocols) < 2 else f"{row['policy']} ({row['protocol']} time)"


def plot_anytime(report: dict[str, Any], fam: dict[str, Any], path: Path) -> Path | None:
    """One family: on-time score vs budget multiplier per policy, AUC in the legend.

    None (nothing drawn) when no policy was played at two multipliers or more.
    """
    rows = [r for r in fam.get("anytime", []) if r["auc"] is not None]
    if not rows:
        return None
    fig, (ax,) = _grid(1, width=6.4, height=4.2)
    policies = _all_policies(report)
    protocols = {r["protocol"] for r in rows}
    for r in rows:
        xs = [p["multiplier"] for p in r["curve"]]
        style = _style(r["policy"], policies)
        dashed = {"ls": "--"} if r["protocol"] == "oracle" and len(protocols) > 1 else {}
        label = f"{_series_label(r, protocols)}: AUC {r['auc']:.2f}"
        ax.plot(xs, [p["score"] for p in r["curve"]], label=label, lw=2, ms=6, **style, **dashed)
        ax.fill_between(
            xs,
            [p["score_lo"] for p in r["curve"]],
            [p["score_hi"] for p in r["curve"]],
            color=style["color"],
            alpha=0.10,
            lw=0,
        )
    ax.set_xlabel("budget multiplier (x reference time)")
    ax.set_ylabel("on-time score")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_title(f"{fam['family']}: anytime curve (shaded: 95% CI)")
    _legend(fig, [ax])
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_effort(report: dict[str, Any], fam: dict[str, Any], path: Path) -> Path | None:
    """One family, the paper's Figure 3: tool calls and generated tokens vs budget multiplier,
    Spearman's rho (over the per-budget means) in the legend. None below two multipliers."""
    rows = [r for r in fam.get("anytime", []) if len(r["curve"]) >= 2]
    if not rows:
        return None
    fig, axes = _grid(2, width=5.0, height=3.8)
    policies = _all_policies(report)
    protocols = {r["protocol"] for r in rows}
    for ax, (name, title) in zip(
        axes, (("tool_calls", "tool calls"), ("gen_tokens", "generated tokens")), strict=True
    ):
        for r in rows:
            rho = r["effort"][name]["rho"]
            rho_text = "-" if rho is None else f"{rho:+.2f}"
            ax.plot(
                [p["multiplier"] for p in r["curve"]],
                [p[name] for p in r["curve"]],
                label=f"{_series_label(r, protocols)} (rho {rho_text})",
                lw=2,
                ms=6,
                **_style(r["policy"], policies),
            )
        ax.set_xlabel("budget multiplier (x reference time)")
        ax.set_ylabel(f"mean {title} per episode")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{fam['family']}: effort vs budget (rho: Spearman over the per-budget means)",
        fontweight="bold",
    )
    _legend(fig, axes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def write_plots(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Draw every plot into ``out``; returns name -> PNG path."""
    if not report["families"]:
        return {}
    files = {
        "score_vs_latency": plot_score_vs_latency(report, out / "score_vs_latency.png"),
        "compliance_vs_budget": plot_compliance_vs_budget(report, out / "compliance_vs_budget.png"),
        "time_breakdown": plot_time_breakdown(report, out / "time_breakdown.png"),
    }
    for fam in report["families"]:
        name = f"score_vs_latency_{fam['family']}"
        files[name] = plot_family_by_budget(report, fam, out / f"{name}.png")
        for kind, draw in (("anytime", plot_anytime), ("effort", plot_effort)):
            drawn = draw(report, fam, out / f"{kind}_{fam['family']}.png")
            if drawn is not None:
                files[f"{kind}_{fam['family']}"] = drawn
    return files
