"""Prometheus text exposition (format 0.0.4) for ``/metrics``: pure rendering.

The app collects :class:`Metric` values from its components; this module only
formats them (``# HELP``, ``# TYPE``, escaped label values).  Counters end in
``_total``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

PREFIX = "aaeventd_"


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: a name (without prefix), its kind, help and samples."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    value: float | None = None
    labelled: Mapping[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


Sample = Metric


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_metrics(metrics: Iterable[Metric]) -> str:
    """The whole exposition text, one family after another."""
    out: list[str] = []
    for m in metrics:
        name = PREFIX + m.name
        out.append(f"# HELP {name} {m.help}")
        out.append(f"# TYPE {name} {m.kind}")
        if m.value is not None:
            out.append(f"{name} {_number(m.value)}")
        for labels, value in m.labelled.items():
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            out.append(f"{name}{{{text}}} {_number(value)}")
    return "\n".join(out) + "\n"
