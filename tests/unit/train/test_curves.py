"""Training curves: every panel draws metrics the RL record writes."""

from timely.train.curves import PANELS, plot_curves
from timely.train.rl_record import budget_bucket_metrics


def test_the_bucket_panels_draw_what_the_record_writes():
    written = set(budget_bucket_metrics([]))
    drawn = {key for title, curves in PANELS if "by budget" in title for key, _ in curves}
    assert drawn and drawn <= written


def test_a_run_with_bucket_metrics_draws_every_panel(tmp_path):
    import json

    rows = []
    for step in (1, 2, 3):
        row = {"step": step, "reward_mean": 0.1 * step, "zero_std_groups": 0.25}
        row.update({key: 0.5 for _, curves in PANELS for key, _ in curves})
        row["score_mid"] = None  # a bucket the batch did not draw
        rows.append(row)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_curves(metrics, tmp_path / "curves.png")
    assert png is not None and png.stat().st_size > 10_000
    assert plot_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
