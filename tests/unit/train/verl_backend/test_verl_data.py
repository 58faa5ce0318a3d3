"""verl parquet rows from the tasks' splits: settings drawn as the CPU trainer draws them."""

from __future__ import annotations

import json

import pytest

from tests.helpers.tiny_model import tiny_tokenizer
from tests.helpers.verl_rows import small_config
from timely.errors import ConfigError
from timely.prompting import prompt_token_ids
from timely.train.verl.data import export_data, export_split
from timely.train.verl.rollout import row_task


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


async def test_train_rows_are_verl_rows_with_the_drawn_setting(tok):
    config = small_config()
    rows = await export_split(config, tok, "train", 6)
    assert len(rows) == 6
    for i, row in enumerate(rows):
        assert row["data_source"] == "timely/math/arithmetic-v1"
        assert row["agent_name"] == "timely_agent" and row["ability"] == "math"
        assert row["reward_model"]["style"] == "rule"
        info = row["extra_info"]
        assert info["index"] == i and info["split"] == "train"
        assert info["latency"] in config.rl.latencies and info["budget_s"] > 0
        task, setting = row_task(info)
        assert row["reward_model"]["ground_truth"] == task.gold_answer  # "-47", not "Answer: -47"
        assert task.spec.split == "train" and task.spec.seed == info["seed"]
        if setting.multiplier is not None:  # budget = multiplier x the expert's time
            low, high = config.rl.budget_multipliers
            assert low <= setting.multiplier <= high
            assert "time budget of" in row["prompt"][-1]["content"]  # the budget line
    assert len({r["extra_info"]["seed"] for r in rows}) == 6


async def test_the_exported_prompt_is_the_first_prompt_of_the_episode(tok):
    rows = await export_split(small_config(), tok, "train", 2)
    info = rows[0]["extra_info"]
    assert rows[0]["prompt"][-1]["role"] == "user"
    # tools are offered on top of the messages, so the count exceeds the bare messages
    assert info["prompt_tokens"] > len(prompt_token_ids(tok, rows[0]["prompt"], []))


async def test_test_rows_cycle_the_fixed_relative_budgets(tok):
    config = small_config()
    rows = await export_split(config, tok, "test", 6)
    multipliers = [r["extra_info"]["multiplier"] for r in rows]
    assert multipliers == pytest.approx(list(config.verl.val_budget_multipliers) * 2)
    assert {r["extra_info"]["split"] for r in rows} == {"test"}


async def test_export_is_seeded(tok):
    a = await export_split(small_config(), tok, "train", 3)
    b = await export_split(small_config(), tok, "train", 3)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = await export_split(small_config(seed=1), tok, "train", 3)
    assert [r["extra_info"]["seed"] for r in c] != [r["extra_info"]["seed"] for r in a]


async def test_a_prompt_over_the_prompt_length_is_refused_at_export(tok):
    config = small_config()
    config = config.model_copy(
        update={"verl": config.verl.model_copy(update={"prompt_length": 64})}
    )
    with pytest.raises(ConfigError, match="over verl.prompt_length=64; raise it"):
        await export_split(config, tok, "train", 1)


def test_parquet_files_read_back_with_datasets(tok, tmp_path):
    from datasets import load_dataset

    progress = []
    paths = export_data(small_config(), tok, tmp_path, progress=lambda *a: progress.append(a))
    train = load_dataset("parquet", data_files=str(paths["train"]), split="train")
    assert len(train) == 6 and set(train.column_names) >= {"prompt", "extra_info", "agent_name"}
    row = train[0]
    task, _ = row_task(row["extra_info"])  # what the agent loop gets back from verl
    assert task.id == "math/arithmetic-v1"
    assert progress[-1] == ("test", 3, 3) and ("train", 6, 6) in progress


async def test_prompt_tokens_are_counted_with_the_chat_template_kwargs(tok):
    """A rollout renders with ``verl.chat_template_kwargs`` (e.g. Qwen3's enable_thinking), so
    the export counts the prompt the same way: what passes export is never refused later."""
    seen: list[dict] = []

    class Recording:
        def __init__(self, inner):
            self._inner = inner

        def apply_chat_template(self, *args, **kwargs):
            seen.append(kwargs)
            return self._inner.apply_chat_template(*args, **kwargs)

        def __call__(self, *args, **kwargs):
            return self._inner(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    config = small_config()
    config = config.model_copy(
        update={"verl": config.verl.model_copy(update={"chat_template_kwargs": {"flag": 1}})}
    )
    await export_split(config, Recording(tok), "train", 1)
    prompts = [call for call in seen if call.get("add_generation_prompt")]
    assert prompts and all(call.get("flag") == 1 for call in prompts)
