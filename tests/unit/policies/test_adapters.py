"""LoRA adapters: merged into a copy of the base, the base untouched, clear errors."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.tiny_model import tiny_model, tiny_tokenizer
from timely.errors import PolicyError
from timely.policies.hf_models import load_model, merge_adapter, shipped_adapter_path


@pytest.fixture
def saved(tmp_path):
    from peft import LoraConfig, get_peft_model

    tokenizer = tiny_tokenizer()
    base = tiny_model(len(tokenizer))
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    peft_model = get_peft_model(
        tiny_model(len(tokenizer)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a fresh LoRA is a no-op (B = 0); make it change something
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    ids = torch.tensor([[1, 5, 9, 14, 2]])
    with torch.no_grad():
        expected = peft_model(ids).logits
    return base_dir, adapter_dir, ids, expected


def test_load_model_merges_an_adapter_into_a_copy(saved):
    base_dir, adapter_dir, ids, expected = saved
    base, _ = load_model(str(base_dir))
    merged, _ = load_model(str(base_dir), adapter=adapter_dir)
    assert merged is not base
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, expected, atol=1e-4)
        assert not torch.allclose(base(ids).logits, expected, atol=1e-3)  # base untouched
    again, _ = load_model(str(base_dir), adapter=adapter_dir)
    assert again is merged  # cached per (base, adapter)


def test_bad_adapter_directory_is_a_clear_error(saved, tmp_path):
    base_dir, *_ = saved
    base, _ = load_model(str(base_dir))
    with pytest.raises(PolicyError, match="not a peft adapter"):
        merge_adapter(base, tmp_path / "nothing-here")


def test_missing_shipped_adapter_says_how_to_make_it():
    with pytest.raises(PolicyError, match="timely-rl"):
        shipped_adapter_path("no-such-adapter")
