"""Keeps the module boundaries of STYLE.md true: an ast scan of every import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aaeventd"

# module (relative to the package) -> import prefixes it must not use
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "config.py": (
        "asyncio",
        "websockets",
        "aaeventd.daemon.hub",
        "aaeventd.daemon.app",
        "aaeventd.protocol",
    ),
    "protocol": ("asyncio", "socket", "websockets", "aaeventd.daemon.hub", "aaeventd.daemon.app"),
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
    "daemon/journal.py": ("websockets", "aaeventd.daemon.hub", "asyncio"),
    "daemon/notify.py": (
        "aaeventd.daemon.hub",
        "aaeventd.daemon.ingest",
        "aaeventd.daemon.wsserver",
        "aaeventd.daemon.app",
    ),
    "client.py": (
        "aaeventd.daemon.hub",
        "aaeventd.daemon.app",
        "aaeventd.daemon.ingest",
        "aaeventd.daemon.wsserver",
    ),
    "cli": ("aaeventd.daemon.hub", "aaeventd.daemon.ingest", "aaeventd.daemon.wsserver"),
    "daemon/metrics.py": ("asyncio", "socket", "websockets", "aaeventd."),
}
ONLY_SDNOTIFY_IMPORTER = "daemon/notify.py"
CLI_DIR = "cli"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def violates(name: str, prefix: str) -> bool:
    """``prefix`` names a module (and its submodules); a trailing dot means "anything in"."""
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


def files_for(key: str) -> list[Path]:
    target = PACKAGE / key
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


@pytest.mark.parametrize("key", sorted(FORBIDDEN))
def test_module_imports_respect_layering(key: str) -> None:
    """Each module stays out of the layers STYLE.md says it must not touch."""
    files = files_for(key)
    assert files
    assert all(f.exists() for f in files)
    bad = [
        f"{f.relative_to(PACKAGE)} imports {name}"
        for f in files
        for name in imports_of(f)
        if any(violates(name, prefix) for prefix in FORBIDDEN[key])
    ]
    assert bad == []


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
    """Only the CLI (and install-service, which it runs) prints; everything else logs."""
    offenders = []
    for f in PACKAGE.rglob("*.py"):
        if f.relative_to(PACKAGE).parts[0] == CLI_DIR:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{f.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []
