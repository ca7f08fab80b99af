"""The domain core imports nothing of ray, fastapi or asyncio, and reads no wall clock.

Two checks: the import statements of the domain modules (and of every engine module they reach)
as written, with `ast`; and, in a fresh interpreter, that importing them loads no Ray or web
framework at all (the standard library may pull in what it likes, so asyncio is judged by the
modules' own imports).
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
    "engine.geo",
    "engine.eta",
    "engine.status",
    "engine.session",
    "engine.stats",
    "engine.routing",
    "engine.errors",
    "engine.integrations",
]
# Frameworks and I/O shells, and the wall clock (time comes in as an argument).
FORBIDDEN = {"ray", "fastapi", "starlette", "uvicorn", "asyncio", "time", "datetime"}
NEVER_LOADED = ("ray", "fastapi", "starlette", "uvicorn")


def module_path(name: str) -> Path:
    return ROOT.joinpath(*name.split(".")).with_suffix(".py")


def imports_of(name: str) -> set[str]:
    """Absolute names of every module `name` imports, anywhere in the file (lazy ones too)."""
    tree = ast.parse(module_path(name).read_text(), filename=str(module_path(name)))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: drop `level` trailing parts of this module's name
                base = ".".join(name.split(".")[: -node.level])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            # `from engine import geo` names a module too.
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
            if m.startswith("engine.") and module_path(m).exists() and m not in seen
        )  # fmt: skip
    return seen


def test_the_domain_modules_exist() -> None:
    for name in DOMAIN:
        assert module_path(name).is_file(), name


@pytest.mark.parametrize("name", DOMAIN)
def test_import_statements_stay_pure(name: str) -> None:
    for module, imports in closure([name]).items():
        bad = {m for m in imports if m.split(".")[0] in FORBIDDEN}
        assert not bad, f"{module} imports {sorted(bad)}"


def test_the_domain_reaches_only_domain_modules() -> None:
    # engine.shard, engine.store, the runtimes... are shells around the core, not part of it.
    reached = set(closure(DOMAIN))
    assert reached <= set(DOMAIN), sorted(reached - set(DOMAIN))


def test_the_scanner_sees_what_it_must() -> None:
    # The shells do import what the domain must not; if the scanner missed these, the checks
    # above would pass for nothing.
    assert "threading" in imports_of("engine.host")
    assert "asyncio" in imports_of("engine.client")
    assert "time" in imports_of("engine.clock")
    assert {"engine.geo", "engine.status", "engine.errors"} <= set(closure(["engine.eta"]))
    shells = closure(["engine.shard"])
    assert "engine.store" in shells
    assert any("time" in imports for imports in closure(["engine.local_runtime"]).values())


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
