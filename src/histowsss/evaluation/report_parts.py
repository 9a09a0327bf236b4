"""Building blocks of the HTML report: escaping and number formatting, tables, inline PNG images (base64
``data:`` URIs) and SVG line charts drawn here; no external URL, so a page built from them is self-contained."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

PALETTE = ["#4363d8", "#e6194b", "#3cb44b", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222;
background:#fafafa;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:14px 0 6px}
.sub{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:8px 0;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}tr.nr td{color:#999;font-style:italic}tr.stale td{color:#a15c00}p.stale{color:#a15c00}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{background:#fff;border:1px solid #ddd;padding:6px}
.grid{display:grid;grid-template-columns:180px repeat(3,max-content);gap:6px 10px;align-items:center}
.grid img{border:1px solid #ccc;image-rendering:pixelated;max-width:240px}
.grid .h{font-weight:bold;font-size:13px}.note{color:#666;font-size:13px}
.legend span{display:inline-block;margin-right:14px;font-size:13px}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #999;vertical-align:middle;margin-right:4px}
pre{background:#fff;border:1px solid #ddd;padding:8px;font-size:12px;overflow:auto;max-height:400px}
nav a{margin-right:12px;font-size:14px}
"""



def esc(v: Any) -> str:
    """``v`` as HTML text (quotes escaped too)."""
    return html.escape(str(v), quote=True)


def fmt(v: Any) -> str:
    """A table cell's text: "-" for None, two decimals for a float, else the escaped value."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return esc(v)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def png_data_uri(arr: np.ndarray, max_side: int = 240) -> str:
    """Base64 PNG ``data:`` URI of an RGB / grey uint8 array, downscaled to ``max_side``."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(arr))
    scale = max_side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                       Image.NEAREST if arr.ndim == 2 or arr.dtype != np.uint8 else Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def colorize(labels: np.ndarray, colors: list[str], ignore_color: str = "#ffffff") -> np.ndarray:
    """RGB image of a class-id map (255 = ignore)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = [int(ignore_color[i : i + 2], 16) for i in (1, 3, 5)]
    for c, hx in enumerate(colors):
        lut[c] = [int(hx[i : i + 2], 16) for i in (1, 3, 5)]
    return lut[labels.astype(np.uint8)]


def table(rows: list[dict], columns: list[str], left: tuple[str, ...] = (), row_class: Callable | None = None) -> str:
    """HTML table of ``rows`` (dicts) in ``columns`` order; ``left``: left-aligned columns; ``row_class``: a row's CSS
    class."""
    head = "".join(f'<th class="{"l" if c in left else ""}">{esc(c)}</th>' for c in columns)
    body = []
    for r in rows:
        cls = row_class(r) if row_class else ""
        cells = "".join(f'<td class="{"l" if c in left else ""}">{fmt(r.get(c))}</td>' for c in columns)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    import math

    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start, stop = math.floor(lo / step) * step, math.ceil(hi / step) * step
    k = int(round((stop - start) / step))
    return [round(start + i * step, 10) for i in range(k + 1)]


def epoch_ticks(x0: float, x1: float) -> list[float]:
    """x-axis ticks: every epoch of a short whole-number range, else the first epoch and round whole numbers
    (1, 10, 20, 30, 40 for 40 epochs); five even steps for a range that is not whole numbers."""
    if not (float(x0).is_integer() and float(x1).is_integer()):
        return [x0 + (x1 - x0) * i / 4 for i in range(5)]
    if x1 - x0 <= 5:
        return [float(v) for v in range(int(x0), int(x1) + 1)]
    ticks = [v for v in nice_ticks(x0, x1) if x0 < v <= x1 and float(v).is_integer()]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else x1 - x0
    if ticks and ticks[0] - x0 < 0.4 * step:
        ticks = ticks[1:]
    return [float(x0)] + ticks


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, width: int = 440, height: int = 240,
               y_range: tuple[float, float] | None = None) -> str:
    """Inline SVG line chart of named (x, y) series, with axes, ticks and a legend."""
    pts = [p for s in series.values() for p in s if p[1] is not None and np.isfinite(p[1])]
    if not pts:
        return ""
    ml, mr, mt, mb = 52, 12, 26, 46
    pw, ph = width - ml - mr, height - mt - mb
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    yticks = nice_ticks(y0, y1) if not y_range else [y0 + (y1 - y0) * i / 4 for i in range(5)]
    y0, y1 = yticks[0], yticks[-1]
    sx = lambda x: ml + (x - x0) / (x1 - x0) * pw  # noqa: E731
    sy = lambda y: mt + ph - (y - y0) / (y1 - y0) * ph  # noqa: E731
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13" font-weight="bold">'
           f'{esc(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fff" stroke="#bbb"/>']
    for yv in yticks:
        y = sy(yv)
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{yv:.3g}</text>')
    for xv in epoch_ticks(x0, x1):
        x = sx(xv)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{mt + ph + 15}" text-anchor="middle" font-size="10">{xv:.3g}</text>')
    out.append(f'<text x="{ml + pw}" y="{mt + ph + 28}" text-anchor="end" font-size="11">epoch</text>')
    lx = ml
    for k, (name, s) in enumerate(series.items()):
        col = PALETTE[k % len(PALETTE)]
        good = [(x, y) for x, y in s if y is not None and np.isfinite(y)]
        if good:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
            out.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="2"/>')
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{col}"/>' for x, y in good)
        out.append(f'<rect x="{lx}" y="{height - 10}" width="10" height="4" fill="{col}"/>'
                   f'<text x="{lx + 13}" y="{height - 5}" font-size="10">{esc(name)}</text>')
        lx += 20 + 6 * len(name)
    out.append("</svg>")
    return "".join(out)
