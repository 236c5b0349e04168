"""The package's layering, kept true by an ast scan of every import.

Three sides over a shared core: ``aaeventd/daemon/`` (what ``aaeventd run``
executes), ``aaeventd/cli/`` (the commands and the terminal views) and the public
libraries ``aaeventd/client.py`` (sources), ``aaeventd/subscriber.py`` (watchers) and
``aaeventd/compat.py`` (the old emitter API, over ``client.py``), over ``protocol/``
and the shared modules (``config``, ``errors``, ``tokens``, ``endpoints``, ``backoff``).
The package rules below say which side may import which; the per-module table under
them keeps each daemon module to its job.
"""

from __future__ import annotations

import ast
import importlib
import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aaeventd"

DAEMON = "aaeventd.daemon"
CLI = "aaeventd.cli"
LIBRARIES = ("aaeventd.client", "aaeventd.subscriber", "aaeventd.compat")
SHARED = ("config.py", "errors.py", "tokens.py", "endpoints.py", "backoff.py")
# What "I/O" means for the sans-I/O protocol package.
IO_MODULES = (
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "select",
    "threading",
    "subprocess",
    "websockets",
    "sdnotify",
    "http",
    "urllib.request",
)
# The one way into the daemon from the CLI: ``run`` calls the composition root.
CLI_ENTRY_INTO_DAEMON = ("aaeventd.daemon.app", "serve")

# module (relative to the package) -> import prefixes it must not use
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "config.py": ("asyncio", "websockets", "aaeventd.daemon", "aaeventd.protocol"),
    "daemon/hub.py": (
        "asyncio",
        "socket",
        "websockets",
        "aaeventd.daemon.journal",
        "aaeventd.daemon.ingest",
    ),
    "daemon/ingest.py": (
        "websockets",
        "aaeventd.daemon.journal",
        "aaeventd.daemon.hub",
        "aaeventd.daemon.wsserver",
    ),
    "daemon/wsserver.py": (
        "aaeventd.daemon.ingest",
        "aaeventd.daemon.journal",
        "sdnotify",
        "aaeventd.daemon.notify",
    ),
    "daemon/web.py": ("aaeventd.daemon.ingest", "aaeventd.daemon.hub", "aaeventd.daemon.journal"),
    # Reads the daemon through its own DaemonState Protocol: no app, not even for types.
    "daemon/views.py": ("aaeventd.daemon.app", "asyncio"),
    "daemon/journal.py": ("websockets", "aaeventd.daemon.hub", "asyncio"),
    "daemon/notify.py": (
        "aaeventd.daemon.hub",
        "aaeventd.daemon.ingest",
        "aaeventd.daemon.wsserver",
        "aaeventd.daemon.app",
    ),
    "daemon/metrics.py": ("asyncio", "socket", "websockets", "aaeventd."),
    "cli": ("aaeventd.daemon.hub", "aaeventd.daemon.ingest", "aaeventd.daemon.wsserver"),
}
ONLY_SDNOTIFY_IMPORTER = "daemon/notify.py"
CLI_DIR = "cli"

# The loggers of the daemon: the names users filter on (docs/configuration.md), kept
# when the modules moved into aaeventd/daemon/ (their __name__ is not the name).
DAEMON_LOGGERS = frozenset(
    {
        "aaeventd.app",
        "aaeventd.audit",
        "aaeventd.desktop",
        "aaeventd.events",
        "aaeventd.handshakes",
        "aaeventd.ingest",
        "aaeventd.journal",
        "aaeventd.notify",
        "aaeventd.peers",
        "aaeventd.web",
        "aaeventd.websockets",
        "aaeventd.wsserver",
    }
)


class Import:
    """One absolute import: the module, the names taken from it, and where it is."""

    def __init__(self, module: str, names: tuple[str, ...], lazy: bool, line: int) -> None:
        self.module = module
        self.names = names
        self.lazy = lazy  # inside a function body
        self.line = line

    def modules(self) -> list[str]:
        """The module, and for ``from PACKAGE import sub`` the submodules it may name."""
        return [self.module, *(f"{self.module}.{name}" for name in self.names)]


def imports_in(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, (), lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = tuple(a.name for a in child.names)
                found.append(Import(child.module, names, lazy, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def imports_of(path: Path) -> set[str]:
    return {imp.module for imp in imports_in(path)}


def violates(name: str, prefix: str) -> bool:
    """``prefix`` names a module (and its submodules); a trailing dot means "anything in"."""
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


def files_for(key: str) -> list[Path]:
    target = PACKAGE / key
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


def offenders(key: str, prefixes: tuple[str, ...]) -> list[str]:
    files = files_for(key)
    assert files
    assert all(f.exists() for f in files)
    return [
        f"{f.relative_to(PACKAGE)}:{imp.line} imports {imp.module}"
        for f in files
        for imp in imports_in(f)
        if any(violates(name, p) for name in imp.modules() for p in prefixes)
    ]


# -- package rules ---------------------------------------------------------------------


def test_the_three_sides_are_packages() -> None:
    """A reader who opens aaeventd/ sees daemon/, cli/, protocol/ and the libraries."""
    for package in ("daemon", "cli", "protocol"):
        assert (PACKAGE / package / "__init__.py").is_file(), package
    for library in LIBRARIES:
        assert (PACKAGE / f"{library.rpartition('.')[2]}.py").is_file(), library


def test_imports_are_absolute() -> None:
    """No relative imports: the rules below read module names as written."""
    relative = [
        f"{f.relative_to(PACKAGE)}:{node.lineno}"
        for f in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


def test_protocol_is_sans_io() -> None:
    """protocol/ imports no I/O, and nothing of the daemon, the CLI or the libraries."""
    assert offenders("protocol", (*IO_MODULES, DAEMON, CLI, *LIBRARIES)) == []


def test_daemon_imports_neither_cli_nor_libraries() -> None:
    """daemon/ imports nothing from cli/ nor the public libraries (they are its clients)."""
    assert offenders("daemon", (CLI, *LIBRARIES)) == []


def test_cli_reaches_the_daemon_only_through_run() -> None:
    """cli/ imports from daemon/ only daemon.app's entry point, inside a function (lazily:
    every other command starts without loading the daemon)."""
    module, name = CLI_ENTRY_INTO_DAEMON
    into_daemon = [
        (f.relative_to(PACKAGE), imp)
        for f in files_for(CLI_DIR)
        for imp in imports_in(f)
        if any(violates(m, DAEMON) for m in imp.modules())
    ]
    assert into_daemon, "the run command starts the daemon"
    bad = [
        f"{path}:{imp.line} imports {imp.module} {imp.names}"
        for path, imp in into_daemon
        if not (imp.module == module and imp.names == (name,) and imp.lazy)
    ]
    assert bad == []


def test_client_library_is_standard_library_only() -> None:
    """client.py is vendorable: it imports only the standard library."""
    outside = sorted(
        imp.module
        for imp in imports_in(PACKAGE / "client.py")
        if imp.module.partition(".")[0] not in sys.stdlib_module_names
    )
    assert outside == []


def test_compat_library_imports_only_the_client_library() -> None:
    """compat.py mirrors the old emitter API on client.py alone (and the standard library)."""
    outside = sorted(
        imp.module
        for imp in imports_in(PACKAGE / "compat.py")
        if imp.module.partition(".")[0] not in sys.stdlib_module_names
        and imp.module != "aaeventd.client"
    )
    assert outside == []


@pytest.mark.parametrize("key", ["subscriber.py", *SHARED])
def test_shared_modules_and_libraries_stay_out_of_daemon_and_cli(key: str) -> None:
    """The shared modules and the subscriber library import nothing from daemon/ or cli/."""
    assert offenders(key, (DAEMON, CLI)) == []


# -- module rules ----------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(FORBIDDEN))
def test_module_imports_respect_layering(key: str) -> None:
    """Each module stays out of the layers it must not touch."""
    assert offenders(key, FORBIDDEN[key]) == []


def test_only_notify_imports_sdnotify() -> None:
    """sdnotify is wrapped in one module (it swallows errors and encodes latin-1)."""
    users = sorted(
        str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("*.py") if "sdnotify" in imports_of(f)
    )
    assert users == [ONLY_SDNOTIFY_IMPORTER]


def test_every_module_has_a_docstring() -> None:
    """Every module says what it owns."""
    missing = [
        str(f.relative_to(PACKAGE))
        for f in PACKAGE.rglob("*.py")
        if ast.get_docstring(ast.parse(f.read_text(encoding="utf-8"))) is None
    ]
    assert missing == []


def test_no_print_outside_the_cli() -> None:
    """Only the CLI package (install-service included) prints; everything else logs."""
    offenders = []
    for f in PACKAGE.rglob("*.py"):
        if f.relative_to(PACKAGE).parts[0] == CLI_DIR:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{f.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


# -- logger names ----------------------------------------------------------------------


def logger_names_in(path: Path) -> list[str]:
    """The first argument of every ``logging.getLogger(...)`` call, as source text."""
    return [
        ast.unparse(node.args[0]) if node.args else "<root>"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "getLogger"
    ]


def test_daemon_loggers_keep_their_documented_names() -> None:
    """The daemon's loggers are named as before the move into aaeventd/daemon/ (never
    ``__name__``, which now says ``aaeventd.daemon.…``), and docs/configuration.md names
    each of them."""
    names = {
        name
        for f in files_for("daemon")
        for name in logger_names_in(f)
        if name
        not in (
            "ROOT",
            "f'{ROOT}.websockets'",
            "EVENTS_LOGGER",
        )  # logsetup: the root, websockets and the events line
    }
    assert "__name__" not in names
    assert {ast.literal_eval(name) for name in names} == DAEMON_LOGGERS
    documented = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert [name for name in sorted(DAEMON_LOGGERS) if f"`{name}`" not in documented] == []


@pytest.mark.parametrize(
    "module", ["app", "handshakes", "ingest", "journal", "notify", "peers", "web", "wsserver"]
)
def test_daemon_module_logs_under_its_old_name(module: str) -> None:
    """``aaeventd.daemon.ingest`` logs as ``aaeventd.ingest``, and so on."""
    log = importlib.import_module(f"aaeventd.daemon.{module}").log
    assert isinstance(log, logging.Logger)
    assert log.name == f"aaeventd.{module}"
