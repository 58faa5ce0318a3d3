"""The tiny random llama (tests/helpers/tiny_model.py) as a GGUF file llama.cpp can run.

:func:`tiny_template` writes a GGUF with the tiny model's hyper-parameters, its byte-level
tokenizer's vocabulary and zero-filled tensors of the right shapes: only the layout, no weights.
:func:`tiny_gguf` then exports the real weights onto it through
:func:`timely.policies.gguf_export.write_gguf`, so a test compares llama.cpp against
transformers on the same weights, and any mapping mistake in the exporter (names, shapes, the
rotary permutation) shows up as different tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from timely.policies.gguf_export import write_gguf


def tiny_template(model: Any, tokenizer: Any, path: Path) -> Path:
    """A llama GGUF shaped like ``model`` (zero weights) with ``tokenizer``'s vocabulary."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "llama")
    head_dim = config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
            for i in range(len(tokens))
        ]
    )
    writer.add_token_merges(["Ġ Ġ"])  # llama.cpp insists on a merges list; this one never fires
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is not None:
            writer.add_tensor(name, np.zeros(tuple(value.shape), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_gguf(model: Any, tokenizer: Any, folder: Path, dtype: str = "f32") -> Path:
    """``model``'s weights exported to ``folder/tiny-<dtype>.gguf`` (see the module docstring)."""
    template = tiny_template(model, tokenizer, folder / "tiny-template.gguf")
    return write_gguf(model, folder / f"tiny-{dtype}.gguf", template=template, dtype=dtype)  # type: ignore[arg-type]
