"""``check_policy``: a mistyped policy fails at once, with a did-you-mean, loading nothing; an
``hf:`` name that is neither embedded nor a directory is looked up on the hub once.

The hub is replaced by stand-ins (no test touches the network): ``HfApi.model_info`` raising
what an offline machine, a missing repository or a reachable hub produce.
"""

from __future__ import annotations

import httpx2
import huggingface_hub
import pytest
from huggingface_hub.errors import RepositoryNotFoundError

from timely.errors import ConfigError, PolicyError
from timely.policies import hf_models
from timely.policies.base import check_policy


@pytest.fixture(autouse=True)
def fresh_lookups(monkeypatch):
    hf_models._lookups.clear()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    yield
    hf_models._lookups.clear()


def hub(monkeypatch, outcome):
    """Make HfApi.model_info raise ``outcome`` (or return it); returns the list of calls."""
    calls = []

    def model_info(self, repo_id, *, timeout=None, **kw):
        calls.append((repo_id, timeout))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    return calls


@pytest.mark.parametrize(
    ("spec", "options", "error", "message"),
    [
        ("hff:smollm2-135m", {}, ConfigError, "Did you mean hf:smollm2-135m?"),
        ("oracle", {}, ConfigError, "must look like PREFIX:NAME"),
        ("scripted:oracel", {}, ConfigError, "Did you mean scripted:oracle?"),
        ("scripted:oracle", {"safty": 2}, ConfigError, "unknown option"),
        ("hf:smollm2-135m", {"max_new_token": 8}, ConfigError, "Did you mean 'max_new_tokens'"),
        ("hf:/no/such/dir", {}, PolicyError, "no such model directory"),
        ("hf:smollm2-135m", {"adapter": "/no/adapter"}, PolicyError, "not a peft adapter"),
        ("openai:gpt-x", {}, ConfigError, "needs the base_url option"),
        ("openai:gpt-x", {"base_url": "http://h/v1", "temprature": 0}, ConfigError, "temperature"),
    ],
)
def test_mistyped_policies_fail_with_what_to_do(spec, options, error, message):
    with pytest.raises(error, match=message.replace("?", r"\?").replace("(", r"\(")):
        check_policy(spec, **options)


def test_good_policies_pass_without_loading_anything(monkeypatch):
    calls = hub(monkeypatch, RuntimeError("the hub must not be asked"))
    # An empty model cache, whatever earlier tests in this process loaded.
    monkeypatch.setattr(hf_models, "_loaded", {})
    check_policy("scripted:oracle", safety=1.5)
    check_policy("hf:smollm2-135m", max_new_tokens=8)
    check_policy("hf:smollm2-135m-timely")
    check_policy("openai:m", base_url="http://127.0.0.1:9/v1", requests_per_minute=60)
    assert not calls
    assert "smollm2-135m" not in hf_models._loaded  # nothing was loaded


def test_a_model_directory_is_not_looked_up(monkeypatch, tmp_path):
    calls = hub(monkeypatch, RuntimeError("the hub must not be asked"))
    assert hf_models.resolve_model(str(tmp_path)) == "directory"
    (tmp_path / "model.gguf").write_text("x")
    with pytest.raises(PolicyError, match="is a file.*llamacpp"):
        hf_models.resolve_model(str(tmp_path / "model.gguf"))
    assert not calls


def test_an_unreachable_hub_is_asked_once_with_a_short_timeout(monkeypatch):
    calls = hub(monkeypatch, httpx2.ConnectError("Name or service not known"))
    for _ in range(3):  # an eval asks for every episode: one lookup
        with pytest.raises(PolicyError) as info:
            check_policy("hf:no-such-model-xyz")
    message = str(info.value)
    assert "could not be reached" in message and "ConnectError" in message
    assert "hf:smollm2-135m" in message and "timely policies" in message
    assert calls == [("no-such-model-xyz", hf_models.HUB_TIMEOUT_S)]


def test_a_name_the_hub_does_not_know_gets_a_did_you_mean(monkeypatch):
    response = httpx2.Response(404, request=httpx2.Request("GET", "https://hub.invalid/x"))
    hub(monkeypatch, RepositoryNotFoundError("404", response=response))
    with pytest.raises(PolicyError, match=r"has no model of that name.*Did you mean hf:smollm2"):
        check_policy("hf:smollm2-135")


def test_a_model_on_the_hub_or_in_the_cache_resolves(monkeypatch):
    hub(monkeypatch, object())
    assert hf_models.resolve_model("org/model") == "hub"
    hf_models._lookups.clear()
    hub(monkeypatch, httpx2.ConnectError("offline"))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/c/cfg.json")
    assert hf_models.resolve_model("org/model") == "cache"  # loads with local_files_only


def test_hf_hub_offline_fails_without_asking(monkeypatch):
    calls = hub(monkeypatch, RuntimeError("the hub must not be asked"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PolicyError, match="HF_HUB_OFFLINE is set"):
        check_policy("hf:org/model")
    assert not calls
