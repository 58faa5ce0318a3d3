"""Optional extras: what needs one says so, with the install line, before any episode runs.

Each extra's absence is simulated by hiding one of its modules (``sys.modules[name] = None``
makes ``importlib.util.find_spec`` report it missing), so these tests run in the dev venv that
has every extra. The table in timely/extras.py is checked against pyproject.toml.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from timely.errors import ConfigError
from timely.extras import EXTRAS, MissingExtra, install_line, missing_modules, require_extra

ROOT = Path(__file__).resolve().parents[3]


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _line(extra: str) -> str:
    return re.escape(f"needs the [{extra}] extra") + ".*" + re.escape(install_line(extra))


# ---- the table ---------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extras_closure(extras: dict[str, list[str]], extra: str) -> set[str]:
    """Distribution names ``extra`` installs, the extras it includes expanded."""
    names: set[str] = set()
    for req in extras[extra]:
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^\]]*)\])?", req)
        assert match, req
        name = _canonical(match.group(1))
        if name == "timely-machine":
            for included in (match.group(3) or "").split(","):
                names |= _extras_closure(extras, included.strip())
        else:
            names.add(name)
    return names


def test_every_module_of_an_extra_is_installed_by_that_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    providers = metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        assert extra in extras, f"timely/extras.py names [{extra}], which pyproject.toml lacks"
        declared = _extras_closure(extras, extra)
        for module in modules:
            # Not installed here (verl, jericho): the module is named like its distribution.
            dists = {_canonical(d) for d in providers.get(module, [module])}
            assert dists & declared, f"[{extra}] does not install {module} ({sorted(dists)})"
    # Every extra that code checks is in the table; embedded is a file, dev the tests' set.
    assert set(extras) - {"embedded", "dev"} <= set(EXTRAS)


def test_an_installed_extra_passes_and_the_error_is_a_config_error(monkeypatch):
    require_extra(None, "anything")  # needs nothing
    require_extra("hf", "the hf: policy")  # the dev venv has it
    _hide(monkeypatch, "torch")
    assert missing_modules("hf") == ["torch"]
    with pytest.raises(ConfigError, match=_line("hf")) as info:
        require_extra("hf", "the hf: policy")
    assert isinstance(info.value, MissingExtra)
    assert (info.value.extra, info.value.missing) == ("hf", ["torch"])
    assert str(info.value) == (
        "the hf: policy needs the [hf] extra (missing: torch): pip install 'timely-machine[hf]'"
    )


# ---- one per extra: where it is resolved --------------------------------------------------


def test_hf_policy_and_tracker_around_it_need_hf(monkeypatch):
    from timely.policies.base import check_policy, make_policy

    _hide(monkeypatch, "torch")
    for spec in ("hf:smollm2-135m", "tracker:hf:smollm2-135m"):
        with pytest.raises(MissingExtra, match=_line("hf")):
            check_policy(spec)
    with pytest.raises(MissingExtra, match=_line("hf")):
        make_policy("hf:smollm2-135m")
    check_policy("tracker:scripted:oracle")  # the light core's policies need nothing


def test_llamacpp_policy_needs_llamacpp(monkeypatch):
    from timely.policies.base import check_policy

    _hide(monkeypatch, "llama_cpp")
    with pytest.raises(MissingExtra, match=_line("llamacpp")):
        check_policy("llamacpp:smollm2-135m")


def test_training_needs_train(monkeypatch, tmp_path, capsys):
    from timely.cli_rl import train_main
    from timely.train.config import TrainConfig
    from timely.train.pipeline import run_chain

    _hide(monkeypatch, "datasets")
    with pytest.raises(MissingExtra, match=_line("train")):
        run_chain(TrainConfig(out=str(tmp_path / "train")))
    assert not (tmp_path / "train").exists()  # nothing ran
    assert train_main([f"out={tmp_path / 'train'}"]) == 2
    assert install_line("train") in capsys.readouterr().err


def test_math_hf_task_and_hf_export_need_data(monkeypatch, tmp_path):
    from timely.task import make_task
    from timely_eval.export import write_export

    _hide(monkeypatch, "datasets")
    with pytest.raises(MissingExtra, match=_line("data")):
        make_task("math/hf-v1", seed=0, dataset=str(tmp_path / "none.jsonl"))
    with pytest.raises(MissingExtra, match=_line("data")):
        write_export(tmp_path / "run", tmp_path / "out", "hf")


async def test_ml_tasks_and_tools_need_ml(monkeypatch):
    from timely.task import make_task
    from timely_tools.base import ToolInputError
    from timely_tools.ml.tools import ml_setup

    _hide(monkeypatch, "sklearn")
    with pytest.raises(MissingExtra, match=_line("ml")):
        make_task("ml/digits-v1", seed=0)
    # A tool server without it starts (the tools import scikit-learn lazily) and says so.
    with pytest.raises(ToolInputError, match=_line("ml")):
        await ml_setup.handler({}, SimpleNamespace(state={}))


def test_textworld_task_needs_games(monkeypatch, tmp_path):
    from timely.task import make_task

    _hide(monkeypatch, "textworld")
    with pytest.raises(MissingExtra, match=_line("games")):
        make_task("games/textworld-v1", seed=0)


def test_jericho_task_needs_jericho(monkeypatch, tmp_path):
    from timely.task import make_task

    _hide(monkeypatch, "jericho")
    with pytest.raises(MissingExtra, match=_line("jericho")):
        make_task("games/jericho-v1", seed=0, games=str(tmp_path))


def test_ray_backend_needs_ray(monkeypatch):
    from timely_eval.runner import check_extras
    from timely_eval.suite import load_suite

    suite = load_suite("smoke", ["backend=ray"])
    _hide(monkeypatch, "ray")
    with pytest.raises(MissingExtra, match=_line("ray")):
        check_extras(suite)
    check_extras(load_suite("smoke", []))  # the local backend needs nothing


def test_verl_backend_names_the_verl_install_line(tmp_path):
    from tests.helpers.verl_rows import small_config
    from timely.train.verl.launch import launch

    config = small_config(out=str(tmp_path / "run"))
    config = config.model_copy(update={"verl": config.verl.model_copy(update={"python": "false"})})
    with pytest.raises(ConfigError, match=re.escape("pip install -e '.[verl]' -r requirements/")):
        launch(config, say=lambda s: None)


# ---- a suite's own tasks on a light install ---------------------------------------------


def test_a_suite_plays_the_tasks_it_can_and_names_the_rest(monkeypatch):
    from timely_eval.runner import check_extras, playable_here
    from timely_eval.suite import load_suite

    suite = load_suite("smoke", [])
    _hide(monkeypatch, "sklearn", "textworld")
    kept, skipped = playable_here(suite)
    assert [t.id for t in kept.tasks] == [
        t.id for t in suite.tasks if not t.id.startswith(("ml/", "games/textworld"))
    ]
    assert len(skipped) == len(suite.tasks) - len(kept.tasks)
    assert all(install_line("ml") in s or install_line("games") in s for s in skipped)
    check_extras(kept)
    with pytest.raises(MissingExtra):
        check_extras(suite)
    only_ml = suite.model_copy(update={"tasks": [t for t in suite.tasks if t.id.startswith("ml/")]})
    assert playable_here(only_ml) == (only_ml, [])  # nothing left: the run fails instead


def test_the_cli_prints_the_install_line_whole(monkeypatch, tmp_path, capsys):
    from timely import cli

    _hide(monkeypatch, "torch")
    argv = ["timely", "eval", "--suite", "smoke", "--policy", "hf:smollm2-135m"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "needs the [hf] extra" in out and install_line("hf") in out
