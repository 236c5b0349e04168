"""aaeventd: the per-user event hub between workflow sources and local UIs."""

from __future__ import annotations

from importlib.metadata import version

# pyproject.toml holds the one literal; an installed (or `pip install -e`) package
# reports it here.
__version__ = version("aaeventd")
SERVER_NAME = "aaeventd"
