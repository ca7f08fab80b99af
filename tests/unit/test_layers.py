"""The layers of the house, checked as written (every import statement, lazy ones included) and
in a fresh interpreter (what an API process actually loads).

- the server (`api/`) knows nothing of its drivers: no import of `sim`, `loadtests`, `harness`;
- every call into Ray lives in the runtime: no module outside `engine/runtime/` imports `ray`;
- an API process on the Ray engine loads no database driver (`sqlite3`): the stores live in the
  shard actors;
- the pure domain (`engine/domain/`) is checked by test_domain_imports.py.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "api", "sim", "loadtests", "harness")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level names of every module a file imports, anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_scanner_sees_imports() -> None:
    # If these were missed, the checks below would pass for nothing.
    assert "ray" in imported(ROOT / "engine/runtime/ray_cluster.py")
    assert "sim" in imported(ROOT / "tests/e2e/test_sim_scenario.py")
    assert "sqlite3" in imported(ROOT / "engine/store/sqlite.py")


@pytest.mark.parametrize("path", modules("api"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_server_does_not_import_its_drivers(path: Path) -> None:
    bad = imported(path) & {"sim", "loadtests", "harness", "tests"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_runtime_imports_ray() -> None:
    runtime = ROOT / "engine" / "runtime"
    offenders = [
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in modules(package)
        if "ray" in imported(p) and runtime not in p.parents
    ]
    assert not offenders, offenders


def test_an_api_process_on_ray_loads_no_database_driver() -> None:
    # Everything an API process imports to serve on the Ray engine, and the app built.
    code = (
        "import json, sys\n"
        "import api.app, api.cli, engine.runtime, engine.runtime.ray_cluster\n"
        "from engine.settings import Settings\n"
        "api.app.create_app(Settings(engine='ray', jwt_secret='x' * 32,"
        " store_url='postgresql://db.invalid/tracking'))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRACKING_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT, env=env
    ).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    assert "engine.runtime.ray_cluster" in loaded
    assert not {"sqlite3", "_sqlite3"} & loaded
    assert not {m for m in loaded if m.split(".")[0] in {"psycopg", "psycopg_binary"}}
    assert not {m for m in loaded if m.split(".")[0] in {"sim", "loadtests", "harness"}}
