"""Every third-party package the code imports is a declared dependency.

A package that arrives only because some other dependency happens to pull it in (anyio through
httpx, starlette through fastapi) breaks the day that dependency changes its own list. Two checks:

* fast (the main suite): the imports of every module of ``timely/``, ``timely_eval/``,
  ``server/`` and ``tools/``, read from the source (AST), mapped to the distributions that provide
  them (``importlib.metadata.packages_distributions``) and compared with pyproject.toml. An import
  at module level must be a core dependency, except in the modules of :data:`EXTRA_MODULES`,
  which may import their extra's packages (``torch`` in the ``hf:`` policy's modules); one
  deferred into a function (``ray``, ``textworld``) may come from any optional extra.
* slow: an environment holding exactly the declared core requirements and what they require in
  turn (resolved from the installed distributions, linked into a fresh site directory, nothing
  downloaded) imports every module of the four packages but :data:`EXTRA_MODULES` in an
  isolated interpreter: the light core (``pip install timely-machine``) imports without torch.
  Each extra's modules then import with the core and that extra alone. It also proves the
  installed versions satisfy the declared specifiers.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.helpers.layout import PACKAGES, module_name, package_dirs, source_dir

ROOT = Path(__file__).resolve().parents[3]
# Scripts run as a program, never imported: the sandbox bootstrap runs itself on import.
SCRIPTS = {"tools/sandbox/_child.py"}
# Modules of the separate GPU environment (docs/scale.md): the package they import at module
# level is declared in the extra of that name, and is not installed here (its pins clash with
# the core's), so they are checked against pyproject.toml only and never imported.
GPU_ENV = {"timely/train/verl/agent_loop.py": "verl"}
# What a GPU-environment package itself depends on, so its modules may import it too:
# verl hands agent loops its Hydra settings as OmegaConf nodes.
GPU_ENV_BRINGS = {"verl": {"omegaconf"}}
# Modules that import an optional extra's packages at module level, and that extra: the light
# core never imports them (its policies, tasks and commands check the extra first, with
# timely.extras.require_extra). A module missing here fails the slow test with the core alone.
EXTRA_MODULES = {
    **{
        f"timely/policies/{name}.py": "hf"
        for name in ("hf", "hf_cached", "hf_generate", "kv_cache", "kv_prefill", "logprobs")
    },
    **{
        f"timely/train/{name}.py": "train"
        for name in ("adapters", "checkpoint", "grpo", "objective", "rl_record", "sft")
    },
}
# Named to the model as available (ML task prompts, the run_python tool) without our code
# importing them: the sandboxed program does. The ML tasks require the [ml] extra.
PROMISED = {"numpy": None, "pandas": "ml", "scikit-learn": "ml"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"unparsable requirement {requirement!r}"
    return _canonical(match.group(1))


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> tuple[set[str], dict[str, str]]:
    """(core distribution names, optional distribution name -> the extra declaring it)."""
    project = _project()
    core = {_req_name(r) for r in project["dependencies"]}
    optional: dict[str, str] = {}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        for r in reqs:
            name = _req_name(r)
            if name != "timely-machine":  # dev = timely-machine[games,...]
                optional.setdefault(name, extra)
    return core, optional


def _extra_requirements(extra: str) -> list[str]:
    """The requirements of ``extra``, with the extras it includes (``timely-machine[hf]``)
    expanded in place."""
    from packaging.requirements import Requirement

    extras = _project().get("optional-dependencies", {})
    out: list[str] = []
    for r in extras[extra]:
        req = Requirement(r)
        if _canonical(req.name) == "timely-machine":
            for included in sorted(req.extras):
                out += _extra_requirements(included)
        else:
            out.append(r)
    return out


def _extra_names(extra: str) -> set[str]:
    """Distribution names ``extra`` installs directly or through the extras it includes."""
    return {_req_name(r) for r in _extra_requirements(extra)}


class _ImportVisitor(ast.NodeVisitor):
    """Collects (top-level module, line, deferred) for every absolute import of one file.

    Deferred: inside a function body, an ``if TYPE_CHECKING:`` block, or a ``try`` that handles
    ImportError: the module imports without it.
    """

    def __init__(self) -> None:
        self.found: list[tuple[str, int, bool]] = []
        self._depth = 0

    def _add(self, name: str, node: ast.AST) -> None:
        self.found.append((name.split(".")[0], node.lineno, self._depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module, node)

    def _deferred(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _deferred

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name == "TYPE_CHECKING":
            self._deferred(node)
        else:
            self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        handled = {
            n.id
            for h in node.handlers
            for n in ast.walk(h.type)
            if h.type is not None and isinstance(n, ast.Name)
        }
        if handled & {"ImportError", "ModuleNotFoundError"}:
            for stmt in node.body:
                self._deferred(stmt)
            for part in (*node.handlers, *node.orelse, *node.finalbody):
                self.visit(part)
        else:
            self.generic_visit(node)


def _modules() -> list[Path]:
    return [
        p
        for pkg in PACKAGES
        for p in sorted(source_dir(pkg).rglob("*.py"))
        if p.relative_to(ROOT).as_posix() not in SCRIPTS | set(GPU_ENV)
    ]


def _third_party_imports() -> list[tuple[str, str, bool]]:
    """(top-level module, 'file:line', deferred) for every import outside stdlib and the project."""
    out = []
    for path in _modules():
        visitor = _ImportVisitor()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for top, line, deferred in visitor.found:
            if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__":
                continue
            out.append((top, f"{path.relative_to(ROOT)}:{line}", deferred))
    return out


def test_extra_modules_exist_and_name_declared_extras():
    extras = _project().get("optional-dependencies", {})
    for module, extra in EXTRA_MODULES.items():
        assert (ROOT / module).is_file(), f"EXTRA_MODULES names {module}, which does not exist"
        assert extra in extras, f"{module}: pyproject.toml has no [{extra}] extra"


def test_gpu_environment_modules_import_only_their_extra():
    _, optional = _declared()
    for module, extra in GPU_ENV.items():
        visitor = _ImportVisitor()
        visitor.visit(ast.parse((ROOT / module).read_text()))
        tops = {t for t, _, _ in visitor.found} - set(sys.stdlib_module_names) - set(PACKAGES)
        assert tops - {"__future__"} - GPU_ENV_BRINGS.get(extra, set()) == {extra}, (module, tops)
        assert optional.get(extra) == extra, f"pyproject.toml has no {extra!r} extra for {module}"


def test_every_import_is_a_declared_dependency():
    core, optional = _declared()
    providers = metadata.packages_distributions()
    problems = []
    for top, where, deferred in _third_party_imports():
        dists = {_canonical(d) for d in providers.get(top, [])}
        if not dists:
            problems.append(
                f"{where} imports {top!r}, which no installed distribution provides: declare "
                "and install it"
            )
        elif not dists & core:
            extras = sorted({optional[d] for d in dists & set(optional)})
            if not extras:
                problems.append(
                    f"{where} imports {top!r} (from {sorted(dists)}), declared nowhere in "
                    "pyproject.toml: add it to [project] dependencies"
                )
            elif not deferred:
                module = where.rsplit(":", 1)[0]
                own = EXTRA_MODULES.get(module)
                if own is None or not dists & _extra_names(own):
                    problems.append(
                        f"{where} imports {top!r} at module level, but it is only in the "
                        f"{extras} extra: import it inside the function that needs it, or list "
                        "the module in EXTRA_MODULES (and keep the light core from importing it)"
                    )
    assert not problems, "\n".join(problems)


def test_packages_promised_to_the_model_are_declared():
    core, _ = _declared()
    for name, extra in PROMISED.items():
        where = core if extra is None else _extra_names(extra)
        assert name in where, f"{name} is not declared in {extra or 'the core'}"


def test_the_import_scan_sees_what_it_must():
    """Guard the scanner itself: it finds known imports, deferred ones marked as deferred."""
    found = {(top, deferred) for top, _, deferred in _third_party_imports()}
    assert ("anyio", False) in found  # server/core.py, at module level
    assert ("ray", True) in found  # timely_eval/ray_backend.py, inside functions
    assert not any(top == "_child" for top, _ in found)


# ---- slow: an environment of the declared dependencies alone ----------------------------------

_IMPORT_ALL = r"""
import importlib, json, site, sys, traceback
site_dir, root, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
site.addsitedir(site_dir)
sys.path.insert(0, root)
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failed[name] = "".join(traceback.format_exception_only(exc)).strip()
print(json.dumps({"failed": failed, "path": sys.path}))
"""


def _resolve(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``requirements`` need, transitively (markers applied).

    Raises:
        AssertionError: a requirement is not installed or its version is not allowed.
    """
    from packaging.requirements import Requirement

    def wanted(req: Requirement, extra: str) -> bool:
        return req.marker is None or req.marker.evaluate({"extra": extra})

    resolved: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, str]] = set()
    todo = [req for req in map(Requirement, requirements) if wanted(req, "")]
    while todo:
        req = todo.pop()
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"declared requirement {req} is not installed")
        assert req.specifier.contains(dist.version, prereleases=True), (
            f"installed {req.name} {dist.version} does not satisfy the declared {req}"
        )
        name = _canonical(req.name)
        resolved[name] = dist
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            todo += [sub for sub in map(Requirement, dist.requires or []) if wanted(sub, extra)]
    return resolved


def _link_site(dists: dict[str, metadata.Distribution], site_dir: Path) -> None:
    """Symlink every installed file of ``dists`` into ``site_dir`` (scripts outside it skipped)."""
    for dist in dists.values():
        for file in dist.files or []:
            if file.parts and file.parts[0] == "..":
                continue  # console scripts in bin/
            src = Path(dist.locate_file(file))
            if not src.exists() or src.suffix == ".pth":
                continue
            dst = site_dir / file
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)


def _import_in_isolation(tmp_path: Path, requirements: list[str], paths: list[Path]) -> None:
    """Import the modules at ``paths`` in an interpreter that sees only what ``requirements``
    need (linked from this environment) and the checkout.

    Raises:
        AssertionError: naming every module that failed to import.
    """
    dists = _resolve(requirements)
    site_dir = tmp_path / "site"
    _link_site(dists, site_dir)
    # The project's own metadata (entry points) without its editable-install hook.
    own = metadata.distribution("timely-machine")
    info = next((f for f in own.files or [] if f.parts[0].endswith(".dist-info")), None)
    if info is not None:
        src = Path(own.locate_file(info.parts[0]))
        (site_dir / info.parts[0]).symlink_to(src, target_is_directory=True)
    # The checkout's mapped folders (server/ -> timely_server) without the editable hook.
    for name, folder in package_dirs().items():
        (site_dir / name).symlink_to(ROOT / folder, target_is_directory=True)
    names = [module_name(path) for path in paths]
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "PATH", "TMPDIR", "LANG")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _IMPORT_ALL,
            str(site_dir),
            str(ROOT),
            json.dumps(names),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # Only the isolated site directory and the checkout supply packages.
    outside = [
        p
        for p in report["path"]
        if "site-packages" in p or "dist-packages" in p
        if not p.startswith(str(site_dir))
    ]
    assert not outside, f"the isolated interpreter saw other site directories: {outside}"
    assert not report["failed"], "\n".join(f"{k}: {v}" for k, v in report["failed"].items())


@pytest.mark.slow
def test_modules_import_with_the_declared_dependencies_alone(tmp_path):
    """The light core: every module but EXTRA_MODULES imports without any extra (no torch)."""
    core_modules = [p for p in _modules() if p.relative_to(ROOT).as_posix() not in EXTRA_MODULES]
    _import_in_isolation(tmp_path, _project()["dependencies"], core_modules)


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(set(EXTRA_MODULES.values())))
def test_extra_modules_import_with_the_core_and_their_extra(tmp_path, extra):
    paths = [ROOT / module for module, own in EXTRA_MODULES.items() if own == extra]
    _import_in_isolation(
        tmp_path, [*_project()["dependencies"], *_extra_requirements(extra)], paths
    )
