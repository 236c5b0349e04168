"""aaeventd: the per-user event hub between workflow sources and local UIs."""

from __future__ import annotations

__version__ = "0.1.0"
SERVER_NAME = "aaeventd"
