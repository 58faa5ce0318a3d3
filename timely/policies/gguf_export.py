"""Merged-adapter GGUF export: the trained policy on the llama.cpp fast path.

A LoRA adapter trains on the transformers model (``hf:``); llama.cpp (``llamacpp:``) runs GGUF
files. :func:`export_adapter_gguf` merges the adapter into the base (peft ``merge_and_unload``)
and writes the result with the ``gguf`` package (gguf-py, maintained in the llama.cpp repository;
``convert_hf_to_gguf.py`` is not part of the ``llama-cpp-python`` wheel, so it is not available
offline). The base GGUF serves as the template: every metadata key (architecture hyper-parameters,
chat template, tokenizer tokens, merges, special token ids) is copied as it is, so llama.cpp sees
the same vocabulary and the prompt token ids the policy feeds it mean the same thing.

Tensors the adapter did not change (with the shipped adapter: the token embeddings and the norms)
are copied byte for byte in their original quantisation; the changed ones are written in the
export ``dtype``:

* ``f16`` (the default): half the size of f32, and its rounding error (about 1e-3 relative) is
  below the Q4_1 quantisation error the base already carries, so greedy output matches the merged
  transformers model token for token in practice; llama.cpp decodes f16 quickly on CPUs.
* ``f32``: exactly the merged transformers weights (the reference for comparisons).
* ``q8_0``: smallest and fastest to decode, with a small quantisation error of its own.

Only the llama architecture (SmolLM2, Llama, Mistral-style checkpoints) is mapped: its q/k
projections are stored with llama.cpp's rotary permutation, applied here as
``convert_hf_to_gguf.py`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from timely.errors import ConfigError, PolicyError

ExportDType = Literal["f32", "f16", "q8_0"]
EXPORT_DTYPES: tuple[str, ...] = ("f32", "f16", "q8_0")
# Bump when the exporter writes different bytes for the same inputs: cached exports key on it.
EXPORT_VERSION = 1
_SUPPORTED_ARCHS = ("llama",)
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def export_adapter_gguf(
    adapter: str | Path,
    out: str | Path,
    *,
    dtype: ExportDType = "f16",
    base_gguf: str | Path | None = None,
) -> Path:
    """Merge a LoRA ``adapter`` into the embedded base model and write a GGUF file.

    Args:
        adapter: a peft adapter directory trained on the embedded SmolLM2-135M (what
            ``timely-rl`` stages and ``timely/adapters/`` hold).
        out: the GGUF file to write (replaced atomically; parent directories are created).
        dtype: the storage type of the tensors the adapter changed, see the module docstring.
        base_gguf: the template GGUF the base model was read from; default the embedded file.
            The transformers base model must have been loaded from this same file.

    Returns:
        ``out`` as a Path.

    Raises:
        ConfigError: an unknown ``dtype``.
        PolicyError: the adapter cannot be loaded or does not fit the base.
    """
    from timely.policies.hf_models import (
        EMBEDDED_MODEL,
        embedded_gguf_path,
        load_model,
        merge_adapter,
    )

    _check_dtype(dtype)
    adapter = Path(adapter).expanduser()
    # Checked before the base model loads: a wrong path fails in milliseconds, not seconds.
    metadata = {"timely.adapter": adapter.name, "timely.adapter_sha256": adapter_digest(adapter)}
    base, _ = load_model(EMBEDDED_MODEL)
    merged = merge_adapter(base, adapter)
    template = Path(base_gguf) if base_gguf else embedded_gguf_path()
    return write_gguf(merged, out, template=template, dtype=dtype, metadata=metadata)


def write_gguf(
    model: Any,
    out: str | Path,
    *,
    template: str | Path,
    dtype: ExportDType = "f16",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a transformers llama-architecture ``model`` as a GGUF shaped like ``template``.

    Args:
        model: the causal LM (a merged one), with the template's architecture and shapes.
        out: the file to write (a temp file next to it is renamed into place).
        template: the GGUF whose metadata, tensor names, order and shapes are kept.
        dtype: storage type of tensors that differ from the template's.
        metadata: extra string keys to record (e.g. which adapter was merged).

    Returns:
        ``out`` as a Path.

    Raises:
        PolicyError: the template is not a llama GGUF or the model does not map onto it.
    """
    import gguf

    _check_dtype(dtype)
    template = Path(template)
    reader = _read_gguf(template)
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    if arch not in _SUPPORTED_ARCHS:
        raise PolicyError(
            f"GGUF export supports the {', '.join(_SUPPORTED_ARCHS)} architecture; {template} is "
            f"{arch!r}"
        )
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_head))
    n_blocks = int(_field(reader, f"{arch}.block_count"))
    sources = _gguf_named_state(model, gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks))
    target = gguf.GGMLQuantizationType[dtype.upper()]

    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        _copy_metadata(reader, writer, dtype, metadata or {})
        for tensor in reader.tensors:
            data, raw_type = _export_tensor(tensor, sources, n_head, n_head_kv, target)
            writer.add_tensor(tensor.name, data, raw_dtype=raw_type)
        unused = sorted(set(sources) - {t.name for t in reader.tensors})
        if unused:
            raise PolicyError(
                f"the model has tensors the template {template.name} has no place for: "
                f"{unused[:5]}; export needs a model with the template's architecture"
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.chmod(0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def adapter_digest(adapter: str | Path) -> str:
    """sha256 over an adapter's config and weights: what a cached export is keyed on.

    Raises:
        PolicyError: not a peft adapter directory.
    """
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise PolicyError(
            f"{path} is not a peft adapter directory (no adapter_config.json); pass the "
            "`adapter` directory a timely-rl stage wrote"
        )
    digest = hashlib.sha256()
    for name in _ADAPTER_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            with file.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def export_key(adapter: str | Path, base_stamp: dict, dtype: str) -> str:
    """A short key for a cached export: adapter contents, base file, dtype, exporter version."""
    payload = json.dumps(
        {
            "adapter": adapter_digest(adapter),
            "base": base_stamp,
            "dtype": dtype,
            "v": EXPORT_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _check_dtype(dtype: str) -> None:
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"unknown GGUF export dtype {dtype!r}; use one of {EXPORT_DTYPES}")


def _read_gguf(path: Path) -> Any:
    import gguf

    if not path.is_file():
        raise PolicyError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise PolicyError(f"{path} is not a readable GGUF file: {e}") from e


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise PolicyError(f"the GGUF template has no {key!r} metadata")
        return default
    return field.contents()


def _gguf_named_state(model: Any, names: Any) -> dict[str, np.ndarray]:
    """The model's tensors as float32 numpy arrays, keyed by their GGUF names.

    A tied ``lm_head`` is left out: a tied GGUF has no ``output.weight`` and llama.cpp reuses the
    token embeddings, as transformers does.
    """
    import torch

    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if tied and key == "lm_head.weight":
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            if "rotary_emb" in key:  # a buffer transformers recomputes; GGUF stores rope params
                continue
            raise PolicyError(f"no GGUF tensor name for model tensor {key!r}")
        out[name] = value.detach().to(torch.float32).cpu().numpy()
    return out


def _export_tensor(
    tensor: Any, sources: dict[str, np.ndarray], n_head: int, n_head_kv: int, target: Any
) -> tuple[np.ndarray, Any]:
    """``(data, raw_dtype)`` for one template tensor: its own bytes when unchanged, else new."""
    import gguf
    from gguf.quants import dequantize, quantize

    if tensor.name not in sources:
        raise PolicyError(f"the model has no tensor for GGUF tensor {tensor.name!r}")
    new = sources[tensor.name]
    if tensor.name.endswith("attn_q.weight"):
        new = _rope_permute(new, n_head)
    elif tensor.name.endswith("attn_k.weight"):
        new = _rope_permute(new, n_head_kv)
    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims fastest first
    if new.shape != shape:
        raise PolicyError(
            f"tensor {tensor.name} has shape {new.shape} in the model but {shape} in the template"
        )
    # An unchanged tensor keeps the template's bytes (the quantised embeddings stay small), except
    # in f32, the reference export: there every matmul runs in f32 as in transformers.
    if target != gguf.GGMLQuantizationType.F32 or tensor.tensor_type == target:
        old = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        if np.array_equal(old, new):
            return tensor.data, tensor.tensor_type
    # llama.cpp keeps 1-D tensors (norms, biases) in f32 whatever the file type.
    qtype = gguf.GGMLQuantizationType.F32 if new.ndim == 1 else target
    return quantize(np.ascontiguousarray(new), qtype), qtype


def _rope_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's q/k row order to llama.cpp's (``LlamaModel.permute`` in convert_hf_to_gguf.py)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _copy_metadata(reader: Any, writer: Any, dtype: str, extra: dict[str, str]) -> None:
    """Every template key except those the writer sets itself; the file type follows ``dtype``."""
    import gguf

    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE or field.name in extra:
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    writer.add_file_type(file_types[dtype])
    for key, value in extra.items():
        writer.add_string(key, value)
