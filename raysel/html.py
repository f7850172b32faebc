"""The toolkit behind raysel's self-contained report.html pages: the style sheet, escaped tables and key-value
lists, notes, side-by-side rows, matplotlib plots embedded as PNG (Agg only, never pyplot), text clipping and
config redaction. No engine is imported; matplotlib only when a plot is drawn.

Callers import the module and qualify its names: ``from raysel import html`` then ``html.table(...)``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Sequence
from html import escape  # public here too: html.escape for text the toolkit's helpers do not wrap
from typing import Any

CLIP = 300
"""Characters of text a cell shows before it is clipped (see `clip`)."""
SECRET_WORDS = ("key", "token", "secret", "password")
"""A config key holding any of these words is left out of a page (see `redact`)."""

CSS = """body { font-family: system-ui, sans-serif; margin: 1em auto; max-width: 1200px; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; } th { background: #f3f3f3; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } p.note { color: #666; font-style: italic; }
td.text { white-space: pre-wrap; word-break: break-word; max-width: 24em; } img { max-width: 100%; display: block; }
td.id { font-family: monospace; font-size: 0.8em; word-break: break-all; max-width: 9em; }
.row { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }"""
"""The style sheet every report page inlines in its <style> element."""


def fmt(value: Any) -> str:
    """A cell's text: floats to 4 significant digits, lists and dicts as clipped JSON, None as ""."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return clip(json.dumps(value, default=str), 120)
    return "" if value is None else str(value)


def clip(text: str, n: int = CLIP) -> str:
    return text if len(text) <= n else text[:n] + "…"


def cell(value: Any, cls: str = "") -> str:
    """One escaped <td>; numbers get the "num" class unless `cls` names another."""
    if not cls and isinstance(value, int | float) and not isinstance(value, bool):
        cls = "num"
    return f'<td class="{cls}">{escape(fmt(value))}</td>' if cls else f"<td>{escape(fmt(value))}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], classes: dict[int, str] | None = None) -> str:
    """An HTML table; `classes` gives some columns a CSS class ("text", "id")."""
    classes = classes or {}
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v, classes.get(i, "")) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def img(fig: Any, alt: str) -> str:
    """The figure as an embedded PNG (the Agg canvas; pyplot's global state is never touched)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def axes(width: float, height: float, rows: int = 1, cols: int = 1) -> Any:
    """A grid of Axes on a new Agg figure (never pyplot: no global state, safe in any thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig.subplots(rows, cols, squeeze=False)


def label(ax: Any, xlabel: str, ylabel: str, legend: bool = False) -> None:
    """Small axis labels and ticks, and a legend when asked."""
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=8)
    if legend:
        ax.legend(fontsize=7)


def inline(value: Any) -> Any:
    """A nested dict as one short line ("calls 6, verdicts (model 2, tie 1)"); other values as they are."""
    if not isinstance(value, dict):
        return value
    return ", ".join(f"{k} ({inline(v)})" if isinstance(v, dict) else f"{k} {fmt(v)}" for k, v in value.items())


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table: each key as a header cell beside its value."""
    return "<table>" + "".join(f"<tr><th>{escape(str(k))}</th>{cell(v)}</tr>" for k, v in pairs) + "</table>"


def records_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per record, one column per top-level key; nested dicts inline in one wrapped cell."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    texts = {i: "text" for i, k in enumerate(keys) if any(isinstance(r.get(k), dict) for r in records)}
    return table(keys, ([inline(r.get(k)) for k in keys] for r in records), texts)


def row(*parts: str) -> str:
    """The parts side by side (wrapping on a narrow page)."""
    return '<div class="row">' + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


def redact(cfg: Any) -> Any:
    """The config without any key that could hold a secret (the config names env vars, never values)."""
    if not isinstance(cfg, dict):
        return cfg
    keep = [k for k in cfg if k == "api_key_env" or not any(w in k.lower() for w in SECRET_WORDS)]
    return {k: redact(cfg[k]) for k in keep}
