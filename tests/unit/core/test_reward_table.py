"""The reward table in docs/concepts.md, number by number."""

from __future__ import annotations

import pytest

from timely.reward import RewardConfig, compute_reward

T = 100.0
VARIANTS = {
    "compliance": RewardConfig(),
    "sin": RewardConfig(variant="paper"),
    "linear": RewardConfig(variant="paper", bonus_shape="linear"),
    "step": RewardConfig(variant="paper", bonus_shape="step"),
}
# answer -> (score, elapsed, on_time, answered) and the documented reward per variant
TABLE = {
    "early": ((1.0, T / 4, True, True), (1, 1.177, 1.150, 1.300)),
    "on time": ((1.0, T, True, True), (1, 1.300, 1.300, 1.300)),
    "late": ((1.0, 1.5 * T, False, True), (0, 0.300, 0.300, 0.300)),
    "cut off": ((0.0, T, False, False), (0, 0, 0, 0)),
    "wrong": ((0.0, T / 2, True, True), (0, 0.100, 0.100, 0.100)),
}


@pytest.mark.parametrize("row", TABLE)
def test_documented_reward_table(row):
    (score, elapsed, on_time, answered), expected = TABLE[row]
    for config, want in zip(VARIANTS.values(), expected, strict=True):
        got = compute_reward(
            score,
            elapsed_s=elapsed,
            budget_s=T,
            on_time=on_time,
            answered=answered,
            formatted=True,
            config=config,
        )
        assert got == pytest.approx(want, abs=5e-4), (row, config)


def test_table_is_in_the_docs():
    from pathlib import Path

    text = (Path(__file__).parents[3] / "docs" / "concepts.md").read_text()
    assert "| early, t = T/4 | 1 | 1.177 | 1.150 | 1.300 |" in text
    assert "| late, t = 1.5·T (`overrun: late`) | 0 | 0.300 | 0.300 | 0.300 |" in text
