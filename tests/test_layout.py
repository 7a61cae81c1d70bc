"""The shape of the house, checked on the installed package: every import runs down the rooms or stays in its own,
no module imports itself back through others, and production code never imports the test helpers.

Rooms, bottom first: errors/config/io/cost -> formats -> data -> models -> teachers -> synth -> curation -> trainer -> runs -> cli.
Every import counts, those inside functions and under TYPE_CHECKING included: a lazy import hides a circle from
Python, not from a reader.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import recot

ROOT = Path(recot.__file__).parent
ROOMS = ["base", "formats", "data", "models", "teachers", "synth", "curation", "trainer", "runs", "cli"]
BASE = {"errors", "config", "io", "cost", "ray_cluster", "__init__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return "cli" if parts[1] == "__main__" else parts[1]


def _imports(module: str, path: Path) -> set[str]:
    """The recot modules ``module`` imports (a name imported from a package resolves to its submodule)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("recot")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("recot"):
                continue
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in out if m in MODULES and m != module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_imports():
    for module in sorted(MODULES):
        if module == "recot.__main__" or (module == "recot.trainer.vllm_decoding" and importlib.util.find_spec("vllm") is None):
            continue  # __main__ runs the command line
        importlib.import_module(module)


def test_imports_run_down_the_rooms():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
              if _room(a) in ROOMS and _room(b) in ROOMS and ROOMS.index(_room(b)) > ROOMS.index(_room(a))]
    assert not upward, "imports that run up the house:\n" + "\n".join(sorted(upward))


def test_production_code_never_imports_the_test_helpers():
    found = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
             if not a.startswith("recot.testing") and b.startswith("recot.testing")]
    assert not found, found


def test_no_import_circles():
    """Depth-first search for a back edge; the circle found is printed whole."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (circle := visit(module)):
            pytest.fail("import circle: " + " -> ".join(circle))


def test_every_room_is_a_real_folder_with_no_links_inside():
    links = [str(p) for p in ROOT.rglob("*") if p.is_symlink()]
    assert not links, links
    assert {_room(m) for m in MODULES} - {"testing", "prompts", "data_cards"} == set(ROOMS)


def test_recot_help_imports_no_heavy_stack():
    """`recot --help` lists every command without importing polars, DuckDB, torch or vLLM."""
    probe = ("import sys; from click.testing import CliRunner; from recot.cli.main import main; "
             "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; print(r.output); "
             "print(sorted(m for m in ('polars', 'duckdb', 'torch', 'vllm', 'transformers', 'pyarrow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    for command in ("curate", "export", "train", "eval", "synth", "review", "run", "models"):
        assert f"  {command} " in done.stdout
