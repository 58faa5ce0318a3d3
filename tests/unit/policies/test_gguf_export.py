"""GGUF export: a transformers llama written onto a GGUF template runs in llama.cpp with the same
greedy tokens; unchanged tensors keep the template's bytes; bad inputs fail clearly."""

from __future__ import annotations

import asyncio
import copy

import gguf
import numpy as np
import pytest
import torch

from tests.helpers.tiny_gguf import tiny_gguf, tiny_template
from tests.helpers.tiny_model import tiny_model
from timely.clock import VirtualClock
from timely.errors import ConfigError, PolicyError
from timely.policies.base import Deadline
from timely.policies.gguf_export import adapter_digest, export_key, write_gguf
from timely.policies.hf import HFPolicy
from timely.policies.llamacpp import LlamaCppPolicy
from timely.policies.llamacpp_models import open_llama
from timely.types import Message

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["hello", "what is six times seven?", "a much longer question " * 5]


@pytest.fixture(scope="module")
def raw_model(tok):
    return tiny_model(len(tok))


def greedy(policy, text: str) -> list[int]:
    deadline = Deadline(at=1e9, clock=VirtualClock())
    out = asyncio.run(policy.generate([Message(role="user", content=text)], [], deadline=deadline))
    return out.token_ids


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_llama_cpp_runs_the_export_like_transformers(raw_model, tok, tmp_path, dtype):
    path = tiny_gguf(raw_model, tok, tmp_path, dtype=dtype)
    llama = open_llama(path, n_ctx=256, n_threads=1)
    fast = LlamaCppPolicy(llama, tok, max_new_tokens=16)
    reference = HFPolicy(raw_model, tok, max_new_tokens=16)
    for text in PROMPTS:
        ours, theirs = greedy(fast, text), greedy(reference, text)
        if dtype == "f32":
            assert ours == theirs
        else:  # f16 rounding may flip a late near-tie; the start is the same
            assert ours[:8] == theirs[:8]


def test_unchanged_tensors_keep_the_template_bytes(raw_model, tok, tmp_path):
    first = tiny_gguf(raw_model, tok, tmp_path, dtype="f32")
    tuned = copy.deepcopy(raw_model)
    with torch.no_grad():
        tuned.model.layers[1].self_attn.q_proj.weight.add_(0.01)
    second = write_gguf(tuned, tmp_path / "tuned.gguf", template=first, dtype="f16")
    before = {t.name: t for t in gguf.GGUFReader(str(first)).tensors}
    after = {t.name: t for t in gguf.GGUFReader(str(second)).tensors}
    assert list(after) == list(before)
    for name, tensor in after.items():
        if name == "blk.1.attn_q.weight":
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F16
        else:
            assert tensor.tensor_type == before[name].tensor_type
            assert np.array_equal(np.asarray(tensor.data), np.asarray(before[name].data))
    fields = gguf.GGUFReader(str(second)).fields
    assert fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert fields["tokenizer.ggml.tokens"].contents() == tok.convert_ids_to_tokens(
        list(range(len(tok)))
    )


def test_a_model_that_does_not_fit_the_template_is_refused(raw_model, tok, tmp_path):
    template = tiny_template(raw_model, tok, tmp_path / "template.gguf")
    wider = tiny_model(len(tok), hidden=64)
    with pytest.raises(PolicyError, match="shape"):
        write_gguf(wider, tmp_path / "out.gguf", template=template)
    assert [p.name for p in tmp_path.iterdir()] == ["template.gguf"]  # no half-written file


def test_bad_inputs(raw_model, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(PolicyError, match="not a readable GGUF"):
        write_gguf(raw_model, tmp_path / "out.gguf", template=junk)
    with pytest.raises(PolicyError, match="does not exist"):
        write_gguf(raw_model, tmp_path / "out.gguf", template=tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match="dtype"):
        write_gguf(raw_model, tmp_path / "out.gguf", template=junk, dtype="q4_k")
    with pytest.raises(PolicyError, match="not a peft adapter"):
        adapter_digest(tmp_path)


def test_the_export_key_follows_the_adapter_contents(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"a")
    base = {"gguf": "x.gguf", "size": 1}
    key = export_key(tmp_path, base, "f16")
    assert export_key(tmp_path, base, "f16") == key
    assert export_key(tmp_path, base, "q8_0") != key
    (tmp_path / "adapter_model.safetensors").write_bytes(b"b")
    assert export_key(tmp_path, base, "f16") != key
