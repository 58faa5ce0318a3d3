"""Loading GGUF models into llama.cpp, and the HF tokenizers that render their prompts.

The ``llamacpp:`` policy renders prompts with the same HF tokenizer as ``hf:`` and hands llama.cpp
token ids, never text, so both engines see identical prompts. This module finds the pieces:

* :func:`resolve_model` turns a spec into a GGUF file and a tokenizer source: the embedded
  SmolLM2 (``smollm2-135m``), the embedded base with a LoRA adapter (a shipped name such as
  ``smollm2-135m-timely``, or ``adapter=DIR``) merged and exported to GGUF once into the cache
  (keyed on the adapter's contents), or any ``.gguf`` path.
* :func:`load_tokenizer` reads the tokenizer from the HF copy of the embedded model when it is
  cached, otherwise converts it from the GGUF (about 10 s on two cores) once and caches it.
* :func:`open_llama` loads a ``llama_cpp.Llama`` once per process and file.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timely.errors import PolicyError
from timely.policies.hf_models import (
    EMBEDDED_MODEL,
    SHIPPED_ADAPTERS,
    _cache_valid,
    _source_stamp,
    cache_root,
    embedded_gguf_path,
    shipped_adapter_path,
)

INSTALL_HINT = (
    "install it with `pip install llama-cpp-python==0.3.36` (it builds llama.cpp from source: "
    "cmake and a C++ compiler, several minutes on two cores) or run `make install`"
)
_GGUF_MAGIC = b"GGUF"
_SOURCE_FILE = "timely-source.json"

log = logging.getLogger(__name__)

_llamas: dict[tuple, Any] = {}
_llamas_lock = threading.Lock()
_tokenizers: dict[str, Any] = {}
_export_lock = threading.Lock()


@dataclass(frozen=True)
class ResolvedModel:
    """Where a ``llamacpp:`` spec's weights and tokenizer come from.

    Attributes:
        gguf: the GGUF file llama.cpp loads.
        tokenizer: an HF tokenizer directory, or None to read it from ``tokenizer_gguf``.
        tokenizer_gguf: the GGUF whose vocabulary renders prompts (the embedded one for the
            embedded base and its adapters: exports keep its tokenizer metadata).
        embedded: the tokenizer is the embedded model's (its HF cache can serve it).
    """

    gguf: Path
    tokenizer: Path | None
    tokenizer_gguf: Path
    embedded: bool


def resolve_model(
    spec: str,
    *,
    adapter: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: str = "f16",
    cache_dir: str | Path | None = None,
) -> ResolvedModel:
    """Find (or export, once) the GGUF file for a ``llamacpp:`` spec.

    Args:
        spec: ``smollm2-135m``, a shipped adapter name (``smollm2-135m-timely``), or a path to
            a ``.gguf`` file.
        adapter: a peft adapter directory merged into the embedded base and exported.
        tokenizer: an HF tokenizer directory to render prompts with (default: the model's own).
        dtype: storage type of merged tensors in an export (see :mod:`.gguf_export`).
        cache_dir: where exports are cached; default ``cache_root() / "gguf"``.

    Raises:
        PolicyError: an unknown name, a missing or non-GGUF file, a bad adapter.
    """
    spec = spec or EMBEDDED_MODEL
    tok = Path(tokenizer).expanduser() if tokenizer else None
    if spec in SHIPPED_ADAPTERS:
        if adapter is not None:
            raise PolicyError(f"{spec} already carries its adapter; pass llamacpp:{EMBEDDED_MODEL}")
        base, shipped = SHIPPED_ADAPTERS[spec]
        spec, adapter = base, shipped_adapter_path(shipped)
    if spec == EMBEDDED_MODEL:
        base_gguf = embedded_gguf_path()
        if adapter is None:
            return ResolvedModel(base_gguf, tok, base_gguf, embedded=tok is None)
        exported = exported_gguf(adapter, dtype=dtype, cache_dir=cache_dir)
        return ResolvedModel(exported, tok, base_gguf, embedded=tok is None)
    if adapter is not None:
        raise PolicyError(
            f"adapter= is merged into the embedded base only; for {spec!r} merge it yourself and "
            "pass the exported .gguf (see `timely-rl export-gguf`)"
        )
    path = Path(spec).expanduser()
    if not path.is_file():
        hint = "" if spec.endswith(".gguf") else f" (known names: {_known_names()})"
        raise PolicyError(f"no GGUF model {spec!r}: the file does not exist{hint}")
    check_gguf(path)
    return ResolvedModel(path, tok, path, embedded=False)


def exported_gguf(
    adapter: str | Path, *, dtype: str = "f16", cache_dir: str | Path | None = None
) -> Path:
    """The cached GGUF export of the embedded base plus ``adapter``, written on first use.

    The file name carries a key over the adapter's bytes, the base file, the dtype and the
    exporter version, so a retrained adapter gets a new export and an unchanged one is reused.
    """
    from timely.policies.gguf_export import export_adapter_gguf, export_key

    adapter = Path(adapter).expanduser()
    key = export_key(adapter, _source_stamp(embedded_gguf_path()), dtype)
    root = Path(cache_dir).expanduser() if cache_dir else cache_root() / "gguf"
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in adapter.name)
    target = root / f"{EMBEDDED_MODEL}+{label}-{dtype}-{key}.gguf"
    with _export_lock:
        if not target.is_file():
            log.info(
                "exporting %s merged into %s to %s (one-time)", adapter, EMBEDDED_MODEL, target
            )
            export_adapter_gguf(adapter, target, dtype=dtype)  # type: ignore[arg-type]
    return target


def check_gguf(path: Path) -> None:
    """Fail early with a clear message on a file llama.cpp would reject with a bare error."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise PolicyError(f"cannot read {path}: {e}") from e
    if magic != _GGUF_MAGIC:
        raise PolicyError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); convert the "
            "model with llama.cpp's convert_hf_to_gguf.py, or use hf:DIR for a transformers "
            "model directory"
        )


def require_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or a PolicyError that says how to install it."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise PolicyError(f"the llamacpp: backend needs llama-cpp-python; {INSTALL_HINT}")
    import llama_cpp

    return llama_cpp


def open_llama(
    path: Path,
    *,
    n_ctx: int = 0,
    n_threads: int | None = None,
    n_batch: int = 512,
    use_extra_bufts: bool | None = None,
) -> Any:
    """A ``llama_cpp.Llama`` for ``path``, loaded once per process and settings.

    Args:
        path: the GGUF file.
        n_ctx: context length; 0 for the model's trained context.
        n_threads: decode threads; default the CPUs this process may use.
        n_batch: prompt tokens per prefill step.
        use_extra_bufts: llama.cpp's weight-repacking buffers (AMX, CPU_REPACK). None: on,
            unless this llama.cpp build uses AMX, whose matmul segfaults on the first decode on
            some hosts (llama.cpp issue 20824; reproduced here with Q4_1 and Q8_0 weights).

    Raises:
        PolicyError: llama-cpp-python is missing, or llama.cpp cannot load the file.
    """
    llama_cpp = require_llama_cpp()
    check_gguf(path)
    threads = n_threads or usable_cpus()
    if use_extra_bufts is None:
        use_extra_bufts = b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info()
    key = (str(path.resolve()), n_ctx, threads, n_batch, use_extra_bufts)
    with _llamas_lock:
        if key not in _llamas:
            try:
                with _model_params(llama_cpp, use_extra_bufts=use_extra_bufts):
                    _llamas[key] = llama_cpp.Llama(
                        model_path=str(path),
                        n_ctx=n_ctx,
                        n_batch=n_batch,
                        n_threads=threads,
                        n_threads_batch=threads,
                        verbose=False,
                    )
                _warm_up(_llamas[key])
            except (ValueError, RuntimeError, OSError) as e:
                _llamas.pop(key, None)
                raise PolicyError(f"llama.cpp could not load {path}: {e}") from e
        return _llamas[key]


def _warm_up(llama: Any) -> None:
    """Decode one token at load: llama.cpp's first decode sets up buffers and threads (~0.2 s,
    ten times a later one), which would otherwise land inside the first call's deadline."""
    bos = int(llama.token_bos())
    llama.eval([bos if bos >= 0 else 0])
    llama.reset()


@atexit.register
def _close_all() -> None:
    """Free the models before interpreter teardown: ``Llama.__del__`` run during module
    cleanup finds llama.cpp's bindings already gone and prints a traceback."""
    with _llamas_lock:
        for llama in _llamas.values():
            with contextlib.suppress(Exception):
                llama.close()
        _llamas.clear()


@contextlib.contextmanager
def _model_params(llama_cpp: Any, *, use_extra_bufts: bool) -> Iterator[None]:
    """``Llama()`` takes no ``use_extra_bufts`` argument (0.3.36), so the model parameters it
    starts from are adjusted while it loads (under ``_llamas_lock``: loads never overlap)."""
    module = llama_cpp.llama_cpp
    original = module.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = use_extra_bufts
        return p

    module.llama_model_default_params = params
    try:
        yield
    finally:
        module.llama_model_default_params = original


def load_tokenizer(model: ResolvedModel) -> Any:
    """The HF tokenizer that renders prompts for ``model`` (cached per process and on disk).

    Raises:
        PolicyError: the tokenizer cannot be loaded or converted.
    """
    from transformers import AutoTokenizer

    if model.tokenizer is not None:
        key = str(model.tokenizer.resolve())
        if key not in _tokenizers:
            try:
                _tokenizers[key] = AutoTokenizer.from_pretrained(key)
            except (OSError, ValueError) as e:
                raise PolicyError(f"could not load a tokenizer from {key}: {e}") from e
        return _tokenizers[key]
    gguf = model.tokenizer_gguf
    stamp = _file_stamp(gguf)
    key = json.dumps(stamp, sort_keys=True)
    if key in _tokenizers:
        return _tokenizers[key]
    hf_copy = cache_root() / "models" / EMBEDDED_MODEL
    if model.embedded and _cache_valid(hf_copy, _source_stamp(gguf)):
        tokenizer = AutoTokenizer.from_pretrained(str(hf_copy))
    else:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        target = cache_root() / "tokenizers" / f"{gguf.stem}-{digest}"
        if _cache_valid(target, stamp):
            tokenizer = AutoTokenizer.from_pretrained(str(target))
        else:
            tokenizer = _convert_tokenizer(gguf)
            try:
                _save_atomically(tokenizer, target, stamp)
            except OSError as e:  # a read-only home must not stop the model from working
                log.warning("could not cache the tokenizer in %s: %s", target, e)
    _tokenizers[key] = tokenizer
    return tokenizer


def usable_cpus() -> int:
    """CPUs this process may run on (the host may have more)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _convert_tokenizer(gguf: Path) -> Any:
    from transformers import AutoTokenizer

    log.info("reading the tokenizer of %s (one-time, ~10 s)", gguf)
    try:
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise PolicyError(
            f"transformers cannot read the tokenizer of {gguf}: {e}. Pass tokenizer=DIR (an HF "
            "tokenizer directory for this model)"
        ) from e


def _save_atomically(tokenizer: Any, target: Path, stamp: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(json.dumps(stamp, indent=1), encoding="utf-8")
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_valid(target, stamp):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"gguf": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _known_names() -> str:
    return ", ".join([EMBEDDED_MODEL, *SHIPPED_ADAPTERS])
