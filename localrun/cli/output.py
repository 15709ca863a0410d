"""Plain-text rendering shared by the commands."""

from __future__ import annotations

from collections.abc import Sequence


def format_figures(rows: Sequence[tuple[str, object]]) -> str:
    """Named figures (an answerer's ``described``), one per line, the values in one column."""
    return _aligned(rows)


def _aligned(rows: Sequence[tuple[str, object]]) -> str:
    """``name: value`` lines, the values in one column."""
    width = max(len(name) for name, _ in rows) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in rows)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by three spaces, like `ollama list`."""
    everything = [header, *rows]
    widths = [max(len(r[i]) for r in everything) for i in range(len(header))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in everything]
    return "\n".join(line.rstrip() for line in lines)
