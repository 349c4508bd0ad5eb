"""The import direction between the parts of daemon/ and eventstore/ holds, and nothing cycles.

Every import counts, wherever it is written: at module level, inside a function, or under
`if TYPE_CHECKING:` (a type-only import still ties the two modules together for a reader and for
the checker). The rules are by directory, so new modules of a room follow its rules unasked.
Imports by name at run time (`daemon/cli/main.py` loads each command's module by its dotted name,
so `--help` stays instant) are not seen; they go from the command line down, the allowed way.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "eventstore")
PLUMBING = frozenset(
    f"daemon.{name}"
    for name in ("config", "logs", "metrics", "sdnotify", "clock", "validation", "exitcodes")
)
"""The process's plumbing: settings, logs, Prometheus, systemd, the clock, validation errors,
exit statuses. Each is a module of its own directly under daemon/."""
STDLIB = frozenset(sys.stdlib_module_names)


@dataclass(frozen=True)
class Import:
    """One imported module, where the import is written and how it reads."""

    importer: str
    target: str
    path: Path
    line: int
    text: str

    def __str__(self) -> str:
        where = f"{self.path.relative_to(ROOT)}:{self.line} ({self.importer})"
        return f"{where} imports {self.target}: `{self.text}`"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of daemon/ and eventstore/ by dotted name (a package by its own name)."""
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module `from ... import` names, relative dots resolved against `importer`."""
    if node.level == 0:
        return node.module or ""
    package = importer if is_package else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_in(importer: str, path: Path, source: str, known: Iterable[str]) -> list[Import]:
    """Every import written in `source`, at any depth; `from package import module` counts as
    the module when `module` is one of `known`."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, is_package, node)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        text = " ".join((ast.get_source_segment(source, node) or "").split())
        found.extend(Import(importer, t, path, node.lineno, text) for t in dict.fromkeys(targets))
    return found


@cache
def imports() -> tuple[Import, ...]:
    """Every import of every module of daemon/ and eventstore/."""
    known = modules()
    return tuple(
        found
        for importer, path in known.items()
        for found in imports_in(importer, path, path.read_text(), known)
    )


def within(module: str, *rooms: str) -> bool:
    """Whether `module` is one of `rooms` or inside one of them (dotted names)."""
    return any(module == room or module.startswith(room + ".") for room in rooms)


def offending(importers: Callable[[str], bool], forbidden: Callable[[str], bool]) -> list[str]:
    return [str(i) for i in imports() if importers(i.importer) and forbidden(i.target)]


def assert_none(violations: Iterable[str], rule: str) -> None:
    listed = list(violations)
    assert not listed, rule + ":\n  " + "\n  ".join(listed)


def is_process_part(module: str) -> bool:
    return (
        within(module, "daemon.runtime", "daemon.http", "daemon.provider", "daemon.service")
        or module in PLUMBING
    )


def test_the_rules_see_every_room() -> None:
    """The module walk finds the rooms the rules name, so a rule cannot pass on an empty set."""
    found = set(modules())
    for room in ("daemon.domain", "daemon.runtime", "daemon.http", "daemon.provider.sandbox"):
        assert room in found
    assert found >= PLUMBING
    assert any(i.target == "daemon.http.context" for i in imports())  # absolute, module level
    assert any(i.target == "daemon.provider.sandbox.accounts" for i in imports())  # relative


def test_eventstore_never_imports_the_daemon() -> None:
    """The log is domain-free: no module of eventstore/ imports anything of daemon/."""
    assert_none(
        offending(lambda m: within(m, "eventstore"), lambda t: within(t, "daemon")),
        "eventstore/ imports daemon/",
    )


def test_the_domain_imports_only_the_standard_library_msgspec_immutables_and_itself() -> None:
    """decide/evolve stay pure: no storage, HTTP, async runtime, logging or other daemon room."""

    def foreign(target: str) -> bool:
        root = target.partition(".")[0]
        pure = root in STDLIB or root in ("msgspec", "immutables")
        return not (within(target, "daemon.domain") or pure)

    assert_none(
        offending(lambda m: within(m, "daemon.domain"), foreign),
        "daemon/domain/ imports beyond the standard library, msgspec, immutables and itself",
    )


def test_the_domain_never_reads_a_clock_draws_randomness_or_does_io() -> None:
    """The domain takes `now` and ids as arguments, so the same inputs always decide the same."""
    io = ("time", "random", "asyncio", "sqlite3", "uuid", "os", "socket", "subprocess")
    assert_none(
        offending(lambda m: within(m, "daemon.domain"), lambda t: within(t, *io)),
        "daemon/domain/ imports a clock, randomness or I/O",
    )


def test_no_process_part_imports_the_command_line() -> None:
    """runtime, http, provider, service and the plumbing never depend on daemon/cli/."""
    assert_none(
        offending(is_process_part, lambda t: within(t, "daemon.cli")),
        "a process part imports daemon/cli/",
    )


def test_the_runtime_never_imports_the_http_layer() -> None:
    """The engine, projections, timers and outbox work without a listener: http/ sits on top."""
    assert_none(
        offending(lambda m: within(m, "daemon.runtime"), lambda t: within(t, "daemon.http")),
        "daemon/runtime/ imports daemon/http/",
    )


def test_the_provider_side_imports_no_runtime_http_or_command_line() -> None:
    """The provider's client, webhook parsing and sandbox serve the process and never call it."""
    assert_none(
        offending(
            lambda m: within(m, "daemon.provider"),
            lambda t: within(t, "daemon.runtime", "daemon.http", "daemon.cli"),
        ),
        "daemon/provider/ imports daemon/runtime/, daemon/http/ or daemon/cli/",
    )


def test_the_plumbing_imports_no_other_room_of_the_daemon() -> None:
    """The plumbing (config, logs, metrics, ...) depends on no daemon room but its own modules."""

    def other_room(target: str) -> bool:
        return within(target, "daemon") and target not in PLUMBING

    assert_none(
        offending(lambda m: m in PLUMBING, other_room),
        "a plumbing module imports another room of daemon/",
    )


def test_the_domain_testing_harness_is_for_tests_only() -> None:
    """No module of daemon/ or eventstore/ imports daemon.domain.testing: tests and bench do."""
    assert_none(
        offending(
            lambda m: m != "daemon.domain.testing",
            lambda t: within(t, "daemon.domain.testing"),
        ),
        "a module imports the in-memory harness daemon.domain.testing",
    )


def test_the_sandbox_provider_is_for_the_demo_only() -> None:
    """Only the sandbox itself and the command line's demo import daemon/provider/sandbox/."""
    assert_none(
        offending(
            lambda m: not within(m, "daemon.provider.sandbox", "daemon.cli.demo"),
            lambda t: within(t, "daemon.provider.sandbox"),
        ),
        "a module outside the demo imports the sandbox provider",
    )


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of daemon/ and eventstore/ it imports.

    Importing `package.module` also runs `package/__init__.py`; that implied edge is left out,
    or every package whose `__init__` re-exports its modules would count as a cycle.
    """
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for i in imports():
        if i.target in graph and i.target != i.importer:
            graph[i.importer].add(i.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_the_modules() -> None:
    """Every dependency goes one way: no module of daemon/ or eventstore/ imports itself back
    through others."""
    described = []
    for component in cycles(import_graph()):
        members = set(component)
        edges = [str(i) for i in imports() if i.importer in members and i.target in members]
        described.append(" <-> ".join(component) + "\n    " + "\n    ".join(edges))
    assert_none(described, "import cycle")


def test_the_cycle_finder_names_each_loop_and_only_loops() -> None:
    """Loops of two and three modules are found, and a module merely importing into one is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a", "d"}, "d": {"e"}, "e": {"f"}, "f": {"d"}}
    assert cycles(graph) == [["a", "b"], ["d", "e", "f"]]


def test_imports_inside_functions_and_type_checking_blocks_count() -> None:
    """A function-level, a TYPE_CHECKING and a relative import are all seen, with their line."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from .provider import SandboxProvider\n"
        "def f() -> None:\n"
        "    import daemon.cli.main\n"
        "from . import settings, helper\n"
    )
    path = ROOT / "daemon" / "provider" / "sandbox" / "api.py"
    known = {"daemon.provider.sandbox.settings"}
    found = {
        (i.target, i.line) for i in imports_in("daemon.provider.sandbox.api", path, source, known)
    }
    assert found == {
        ("typing", 1),
        ("daemon.provider.sandbox.provider", 3),
        ("daemon.cli.main", 5),
        ("daemon.provider.sandbox.settings", 6),
        ("daemon.provider.sandbox", 6),
    }


def test_no_part_of_the_daemon_starts_a_task_outside_a_task_group() -> None:
    """Every background task of the process runs in an anyio task group, so a crash of any of
    them takes the process down; the sandbox (tests and demo only) is left aside."""
    unsupervised = ("create_task", "ensure_future")
    found = []
    for module, path in modules().items():
        if not within(module, "daemon") or within(module, "daemon.provider.sandbox"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in unsupervised:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {name}")
    assert_none(found, "a task started outside a task group")
