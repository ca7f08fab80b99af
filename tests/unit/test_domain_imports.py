"""The domain core (`engine.domain`) imports nothing of ray, fastapi or asyncio, and reads no
wall clock. It may use serialization libraries (msgspec for its view structs, orjson).

Two checks: the import statements of the domain modules (and of every engine module they reach,
and the packages that importing them runs) as written, with `ast`; and, in a fresh interpreter,
that importing them loads no Ray or web framework at all (the standard library may pull in what
it likes, so asyncio is judged by the modules' own imports).
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
DOMAIN = [
    "engine.domain.geo",
    "engine.domain.eta",
    "engine.domain.status",
    "engine.domain.session",
    "engine.domain.stats",
    "engine.domain.routing",
    "engine.domain.errors",
    "engine.domain.integrations",
    "engine.domain.outbox_policy",
    "engine.domain.view",
    "engine.domain.fixes",
    "engine.domain.proximity",
]
# The packages importing a domain module runs first (`engine/__init__.py`, ...).
DOMAIN_PACKAGES = ["engine", "engine.domain"]
# Frameworks and I/O shells, and the wall clock (time comes in as an argument).
FORBIDDEN = {"ray", "fastapi", "starlette", "uvicorn", "asyncio", "time", "datetime"}
NEVER_LOADED = ("ray", "fastapi", "starlette", "uvicorn")


def module_path(name: str) -> Path:
    """The file of module `name`: `engine/store/__init__.py` for a package, else `.py`."""
    base = ROOT.joinpath(*name.split("."))
    package = base / "__init__.py"
    return package if package.is_file() else base.with_suffix(".py")


def is_package(name: str) -> bool:
    return module_path(name).name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """Absolute names of every module `name` imports, anywhere in the file (lazy ones too),
    and the packages above it (importing `engine.domain.geo` runs `engine.domain` first)."""
    tree = ast.parse(module_path(name).read_text(), filename=str(module_path(name)))
    parts = name.split(".")
    out: set[str] = {".".join(parts[:i]) for i in range(1, len(parts))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `.` is the package itself in an __init__, else the parent
                drop = node.level - 1 if is_package(name) else node.level
                base = ".".join(parts[: len(parts) - drop])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            # `from engine.domain import geo` names a module too.
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def closure(names: list[str]) -> dict[str, set[str]]:
    """Every engine module reachable from `names`, with its own imports."""
    seen: dict[str, set[str]] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = imports_of(name)
        todo.extend(
            m for m in seen[name]
            if m.split(".")[0] == "engine" and module_path(m).exists() and m not in seen
        )  # fmt: skip
    return seen


def test_the_domain_modules_exist() -> None:
    for name in DOMAIN:
        assert module_path(name).is_file(), name
        assert not is_package(name), name
    for name in DOMAIN_PACKAGES:
        assert is_package(name), name


@pytest.mark.parametrize("name", DOMAIN)
def test_import_statements_stay_pure(name: str) -> None:
    for module, imports in closure([name]).items():
        bad = {m for m in imports if m.split(".")[0] in FORBIDDEN}
        assert not bad, f"{module} imports {sorted(bad)}"


def test_the_domain_reaches_only_domain_modules() -> None:
    # engine.shard, engine.protocol, engine.store, the runtimes... are shells around the core,
    # not part of it.
    reached = set(closure(DOMAIN))
    allowed = set(DOMAIN) | set(DOMAIN_PACKAGES)
    assert reached <= allowed, sorted(reached - allowed)
    assert set(DOMAIN_PACKAGES) <= reached  # the packages' own imports were checked too


def test_the_scanner_sees_what_it_must() -> None:
    # The shells do import what the domain must not; if the scanner missed these, the checks
    # above would pass for nothing.
    assert "threading" in imports_of("engine.host")
    assert "asyncio" in imports_of("engine.client")
    assert "time" in imports_of("engine.clock")
    assert "msgspec" in imports_of("engine.domain.view")  # third-party imports are seen too
    assert {"engine.domain.geo", "engine.domain.status", "engine.domain.errors"} <= set(
        closure(["engine.domain.eta"])
    )
    # Packages are followed, and imports inside functions: engine.store opens SQLite lazily.
    assert "engine.store.sqlite" in imports_of("engine.store")
    shells = closure(["engine.shard", "engine.host"])
    assert {"engine.protocol", "engine.store", "engine.store.base", "engine.store.sqlite"} <= set(
        shells
    )
    assert "sqlite3" in shells["engine.store.sqlite"]
    # The runtimes' closures reach the wall clock (engine.clock), and Ray is found where it is.
    assert any("time" in imports for imports in closure(["engine.runtime.local"]).values())
    assert "ray" in imports_of("engine.runtime.ray_cluster")


def test_a_fresh_interpreter_loads_no_framework() -> None:
    code = (
        "import json, sys\n"
        f"for name in {DOMAIN!r}:\n"
        "    __import__(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRACKING_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT, env=env
    ).stdout
    loaded = set(json.loads(out))
    assert set(DOMAIN) <= loaded
    bad = sorted(m for m in loaded if m.split(".")[0] in NEVER_LOADED)
    assert not bad, bad
