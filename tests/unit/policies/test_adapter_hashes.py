"""The adapter sha256 check: a shipped or trained adapter records the hash of its weights and
config, and loading refuses files that do not match (tampered, truncated), saying what to do."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from tests.helpers.tiny_model import tiny_model, tiny_tokenizer
from timely.errors import PolicyError
from timely.policies import hf_models
from timely.policies.hf_models import (
    ADAPTER_HASH_FILE,
    load_model,
    shipped_adapter_path,
    verify_adapter,
    write_adapter_hashes,
)
from timely.train.adapters import check_adapter_dir
from timely.train.ship import ship_adapter


@pytest.fixture
def saved(tmp_path):
    """(base model dir, adapter dir with its hash file)."""
    from peft import LoraConfig, get_peft_model

    tokenizer = tiny_tokenizer()
    base_dir = tmp_path / "base"
    tiny_model(len(tokenizer)).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    peft_model = get_peft_model(
        tiny_model(len(tokenizer)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter_dir = tmp_path / "run" / "adapter"
    peft_model.save_pretrained(adapter_dir)
    write_adapter_hashes(adapter_dir)
    return base_dir, adapter_dir


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_shipped_adapter_carries_matching_hashes():
    path = shipped_adapter_path("smollm2-135m-timely")
    assert (path / ADAPTER_HASH_FILE).is_file()
    verify_adapter(path, required=True)


def test_a_good_adapter_loads(saved):
    base_dir, adapter_dir = saved
    merged, _ = load_model(str(base_dir), adapter=adapter_dir)
    assert merged is not load_model(str(base_dir))[0]


def test_a_flipped_byte_is_refused_with_what_to_do(saved):
    base_dir, adapter_dir = saved
    load_model(str(base_dir), adapter=adapter_dir)  # cached before the file changes
    _flip_a_byte(adapter_dir / "adapter_model.safetensors")
    with pytest.raises(PolicyError, match="sha256") as e:
        load_model(str(base_dir), adapter=adapter_dir)
    assert "adapter_model.safetensors" in str(e.value)
    assert "timely-rl ship" in str(e.value) and f"delete {ADAPTER_HASH_FILE}" in str(e.value)
    with pytest.raises(PolicyError, match="sha256"):
        check_adapter_dir(str(adapter_dir))  # the trainer's init check too


def test_a_truncated_or_edited_config_is_refused(saved):
    _, adapter_dir = saved
    weights = adapter_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PolicyError, match="adapter_model.safetensors"):
        verify_adapter(adapter_dir, required=False)
    write_adapter_hashes(adapter_dir)
    config = adapter_dir / "adapter_config.json"
    config.write_text(config.read_text().replace('"r": 4', '"r": 8'))
    with pytest.raises(PolicyError, match="adapter_config.json"):
        verify_adapter(adapter_dir, required=False)


def test_missing_hash_file_explicit_directory_loads_with_a_warning(saved, caplog):
    base_dir, adapter_dir = saved
    (adapter_dir / ADAPTER_HASH_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger=hf_models.__name__):
        load_model(str(base_dir), adapter=adapter_dir)
    assert "unchecked" in caplog.text


def test_missing_hash_file_shipped_adapter_is_refused(saved, tmp_path, monkeypatch):
    base_dir, adapter_dir = saved
    root = tmp_path / "shipped"
    shipped = ship_adapter(adapter_dir, "tiny-timely", root=root)
    assert (shipped / ADAPTER_HASH_FILE).is_file()  # ship writes the hashes
    monkeypatch.setattr(hf_models, "_ADAPTER_ROOT", root)
    monkeypatch.setitem(hf_models.SHIPPED_ADAPTERS, "tiny-timely", (str(base_dir), "tiny-timely"))
    load_model("tiny-timely")  # float16 copy, its own hashes: loads
    (shipped / ADAPTER_HASH_FILE).unlink()
    with pytest.raises(PolicyError, match=f"no {ADAPTER_HASH_FILE}.*timely-rl ship"):
        load_model("tiny-timely")


def test_save_adapter_records_the_hashes(saved, tmp_path):
    from peft import PeftModel

    from timely.train.adapters import save_adapter

    base_dir, adapter_dir = saved
    base, _ = load_model(str(base_dir))
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir))
    out = save_adapter(model, tmp_path / "trained", str(base_dir))
    verify_adapter(out, required=True)


def test_ship_refuses_a_run_adapter_that_no_longer_matches(saved, tmp_path):
    _, adapter_dir = saved
    _flip_a_byte(adapter_dir / "adapter_model.safetensors")
    with pytest.raises(PolicyError, match="sha256"):
        ship_adapter(adapter_dir, "tiny-timely", root=tmp_path / "shipped")
    assert not (tmp_path / "shipped" / "tiny-timely").exists()


def test_ship_carries_the_runs_config_metrics_and_says_which_reward(saved, tmp_path):
    _, adapter_dir = saved
    run = adapter_dir.parent
    (run / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.5}\n')
    (run / "config.yaml").write_text("time_reward: false\nsteps: 16\n")
    shipped = ship_adapter(adapter_dir, "tiny-notime", root=tmp_path / "shipped")
    assert (shipped / "training-metrics.jsonl").read_text() == '{"step": 1, "reward_mean": 0.5}\n'
    assert "time_reward: false" in (shipped / "training-config.yaml").read_text()
    assert "ablation" in (shipped / "README.md").read_text()
    (run / "config.yaml").write_text("time_reward: true\n")
    card = ship_adapter(adapter_dir, "tiny-rl", root=tmp_path / "shipped") / "README.md"
    assert "budget-aware reward" in card.read_text() and "ablation" not in card.read_text()
