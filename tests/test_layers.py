"""The package's layers: a module imports only from its own layer or lower ones, and no
import cycle exists. Runtime imports only; those under ``if TYPE_CHECKING:`` do not count.

Lowest first: the top-level modules of ``worker`` (errors, clock, logs, retry, ...), then
the subpackages in :data:`LAYERS` order. ``dev`` (the demo and the stand-in) sits below
``commands`` only so that ``ackworker mock-api`` can start the stand-in; nothing else imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "worker"
LAYERS = ("", "api", "store", "config", "observe", "pipeline", "dev", "commands")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    if module == "worker.__main__":  # ``python -m worker``: the command line's other door
        return LAYERS.index("commands")
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):
        return LAYERS.index(parts[1])
    return 0  # worker itself or one of its top-level modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def _imports(path: Path) -> set[str]:
    """The ``worker`` modules ``path`` imports at run time (``from worker.x import y``
    counts ``worker.x.y`` when that is a module, else ``worker.x``)."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "worker")
        elif isinstance(node, ast.ImportFrom):
            # Relative imports would hide a module's layer from a reader; none are used.
            assert not node.level, f"{path}:{node.lineno}: relative import"
            if not node.module or node.module.split(".")[0] != "worker":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_the_walk_sees_the_whole_package() -> None:
    assert len(MODULES) > 60
    assert "worker.pipeline.runner" in GRAPH["worker.commands.run"]
    assert "worker.dev.mockapi.main" in GRAPH["worker.commands.cli"]  # imports inside functions


def test_the_walk_finds_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from worker.pipeline.runner import Worker\n"
        "if TYPE_CHECKING:\n"
        "    from worker.commands import cli\n"
        "def later() -> None:\n"
        "    import worker.config.settings\n"
    )
    assert _imports(source) == {"worker.pipeline.runner", "worker.config.settings"}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    upward = sorted(dep for dep in GRAPH[module] if _layer(dep) > _layer(module))
    assert not upward, f"{module} (layer {LAYERS[_layer(module)] or 'worker'}) imports {upward}"


def test_there_is_no_import_cycle() -> None:
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for dep in sorted(GRAPH.get(module, ())):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_the_rule_itself_catches_an_upward_import() -> None:
    assert _layer("worker.store.settle") < _layer("worker.config.settings")
    assert _layer("worker.errors") == 0
    assert _layer("worker.commands.cli") == len(LAYERS) - 1


def test_ackworker_run_loads_no_development_code() -> None:
    # The real entry point: the command line is parsed as for `ackworker run`.
    probe = (
        "import sys\n"
        "from worker.commands import cli, run\n"
        "args, rest = cli.build_parser().parse_known_args(['run'])\n"
        "assert args.handler is cli._cmd_run and not rest\n"
        "print(sorted(m for m in sys.modules if m.startswith('worker.dev')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_the_worker_run_path_imports_no_development_code() -> None:
    reached: set[str] = set()
    todo = ["worker.commands.run"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(GRAPH.get(module, ()))
    assert not sorted(m for m in reached if m.startswith("worker.dev")), reached
