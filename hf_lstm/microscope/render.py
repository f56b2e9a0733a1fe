"""What the microscope draws: heatmaps of the gates (units x tokens) and the curve of what a token leaves in
memory, as inline SVG. Every token column and every point carries a `<title>`, so hovering shows the values in
any browser without JavaScript. A heatmap panel is one small PNG (one pixel per value) scaled up, so a page
of 600 tokens stays light. Carried into a Space with `reading` (standard library and numpy only).
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib

import numpy as np

from .reading import CARRY_GATE, Reading

VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
"""Stops of matplotlib's viridis, for the gates (0 to 1)."""
DIVERGING = ((33, 102, 172), (247, 247, 247), (178, 24, 43))
"""Blue, white, red: for the cell and hidden states (negative, zero, positive)."""
LABELS = {
    "forget": "forget gate f_t",
    "input": "input gate i_t",
    "output": "output gate o_t",
    "cell": "cell state C_t",
    "update": "update gate z_t",
    "reset": "reset gate r_t",
    "hidden": "hidden state h_t",
}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
ROW = 8  # pixels per unit in a heatmap
LEFT = 118  # room for the panel names


def _colors(stops, x: np.ndarray) -> np.ndarray:
    """`x` in [0, 1] (any shape) as RGB bytes (shape + (3,)), interpolating linearly between `stops`."""
    grid = np.linspace(0.0, 1.0, len(stops))
    x = np.clip(np.nan_to_num(x, nan=0.5), 0.0, 1.0)
    return (
        np.stack([np.interp(x, grid, [c[j] for c in stops]) for j in range(3)], axis=-1)
        .round()
        .astype(np.uint8)
    )


def _png(rgb: np.ndarray) -> str:
    """An (height, width, 3) uint8 image as a PNG data URI (one pixel per value; the SVG scales it up)."""
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[r].tobytes() for r in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _column_width(tokens: int) -> int:
    return max(6, min(24, 1000 // max(tokens, 1)))


def _tick(token: str, limit: int = 12) -> str:
    token = token.replace("\n", "\\n")
    return token if len(token) <= limit else token[: limit - 1] + "…"


def heatmaps(reading: Reading, units: list[list[int]], position: int | None = None) -> str:
    """Every layer's panels (`reading.PANELS`) over the tokens, drawing `units[layer]` in that order; the
    column at `position` is outlined. Hover a cell for its value, a token for its means."""
    if reading.cell_type is None:
        return "<p>This model has no gates to draw (it is not an hf_lstm recurrent model).</p>"
    parts = []
    for layer, panels in enumerate(reading.panels):
        parts.append(f"<h4 style='margin:8px 0 2px'>layer {layer + 1}</h4>")
        parts.append(_layer_svg(reading, layer, panels, units[layer], position))
    return f"<div class='microscope-heatmaps' style='overflow-x:auto'>{''.join(parts)}</div>"


def _layer_svg(reading: Reading, layer: int, panels: dict, units: list[int], position: int | None) -> str:
    """One layer: each panel an image (units x tokens, one pixel per value, scaled up crisply), under a
    transparent column per token whose tooltip lists that token's value in every unit shown."""
    tokens = reading.tokens
    cw, height, gap = _column_width(len(tokens)), ROW * len(units), 10
    width = LEFT + cw * len(tokens) + 4
    bottom = len(panels) * (height + gap)
    out = [
        f"<svg class='heatmap' data-layer='{layer}' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{bottom + 70}' style='font:10px sans-serif'>"
    ]
    for k, (name, values) in enumerate(panels.items()):
        top = k * (height + gap)
        shown = values[:, units].astype(np.float64)  # (tokens, units)
        gate = name not in ("cell", "hidden")
        # C_t is unbounded (a few cells grow far beyond the rest): colour tanh(C_t), what o_t lets out
        state = np.tanh(shown) if name == "cell" else shown
        rgb = _colors(VIRIDIS, shown.T) if gate else _colors(DIVERGING, 0.5 + 0.5 * state.T)
        out.append(
            f"<text x='2' y='{top + height / 2 + 3}'>{LABELS[name]}</text>"
            f"<image class='panel' data-panel='{name}' x='{LEFT}' y='{top}' width='{cw * len(tokens)}' "
            f"height='{height}' preserveAspectRatio='none' style='image-rendering:pixelated' "
            f"href='{_png(rgb)}'/>"
        )
        for t in range(len(tokens)):
            values_at = ", ".join(f"unit {u} {v:.3f}" for u, v in zip(units, shown[t]))
            tip = html.escape(f"#{t} {tokens[t]!r}, {LABELS[name]}: {values_at}")
            out.append(
                f"<rect x='{LEFT + t * cw}' y='{top}' width='{cw}' height='{height}' fill='transparent'>"
                f"<title>{tip}</title></rect>"
            )
    if position is not None:
        out.append(
            f"<rect class='selected' x='{LEFT + position * cw}' y='0' width='{cw}' height='{bottom - gap}' "
            "fill='none' stroke='#ff2d00' stroke-width='2'/>"
        )
    for t, token in enumerate(tokens):
        means = ", ".join(f"{name} {float(values[t].mean()):.2f}" for name, values in panels.items())
        tip = html.escape(f"#{t} {token!r} (mean over all units): {means}")
        weight = "bold" if t == position else "normal"
        x = LEFT + t * cw + cw / 2
        out.append(
            f"<text x='{x}' y='{bottom + 2}' transform='rotate(60 {x} {bottom + 2})' font-weight='{weight}' "
            f"fill='{'#000' if t < reading.prompt_length else '#1a6'}'><title>{tip}</title>"
            f"{html.escape(_tick(token.strip() or token))}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def next_token_label(reading: Reading, position: int) -> dict[str, float]:
    """The top-10 next tokens after `position` as `gr.Label` wants them (label: probability). Tokens whose
    texts coincide (e.g. two special tokens) are added up."""
    label: dict[str, float] = {}
    for token, p in reading.top_next[position]:
        key = repr(token)[1:-1] if token.strip() else repr(token)
        label[key] = label.get(key, 0.0) + p
    return label


def memory_html(reading: Reading, position: int, carried: list | None, sensitivity) -> str:
    """What the token at `position` leaves in memory later on: per layer, the mean product of the carrying
    gate (LSTM: forget gate; GRU: update gate) and, for every cell type, the measured sensitivity of the
    last layer's h_t to that token's input (the vanilla RNN's vanishing gradient), on a log scale."""
    tokens = reading.tokens
    series = []
    gate = CARRY_GATE.get(reading.cell_type)
    for layer, curve in enumerate(carried or []):
        series.append((f"layer {layer + 1}: product of {gate} gates", curve, COLORS[layer % 6], ""))
    series.append(("|dh_t/dx_s · x_s| (last layer, relative)", np.asarray(sensitivity), "#444", "5,3"))
    caption = (
        f"What survives of #{position} {tokens[position]!r} at the positions after it. "
        + (
            f"An LSTM carries what it wrote into C_s forward multiplied by every later {gate} gate: "
            "the solid lines are that product, averaged over the units. "
            if reading.cell_type in ("lstm", "peephole")
            else "A GRU keeps h_(t-1) in proportion to its update gate z_t: the solid lines are the product "
            "of z over the positions after the token, averaged over the units. "
            if gate
            else "A vanilla RNN has no gate to carry memory: "
        )
        + "The dashed line is how strongly that token's input still moves the last layer's h_t, measured "
        "exactly by automatic differentiation (for a vanilla RNN, the vanishing gradient)."
    )
    return f"<p style='margin:4px 0'>{html.escape(caption)}</p>{_curves_svg(tokens, position, series)}"


def _curves_svg(tokens: list[str], position: int, series: list) -> str:
    steps = len(tokens) - position
    lowest = min((float(np.min(c[c > 0])) for _, c, _, _ in series if np.any(c > 0)), default=1e-3)
    highest = max((float(np.max(c)) for _, c, _, _ in series), default=1.0)
    low, high = math.floor(math.log10(max(lowest, 1e-12))), math.ceil(math.log10(max(highest, 1e-12)))
    high = max(high, low + 1)
    cw = max(14, min(40, 900 // max(steps, 1)))
    left, top, plot_h = 50, 10, 220
    width, height = left + cw * max(steps, 1) + 20, top + plot_h + 80 + 16 * len(series)

    def y(v: float) -> float:
        v = math.log10(max(v, 10.0**low))
        return top + plot_h * (high - v) / (high - low)

    out = [
        f"<svg class='memory' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        "style='font:10px sans-serif'>"
    ]
    for e in range(low, high + 1):
        out.append(
            f"<line x1='{left}' x2='{width - 10}' y1='{y(10.0**e)}' y2='{y(10.0**e)}' stroke='#ddd'/>"
            f"<text x='4' y='{y(10.0**e) + 3}'>1e{e}</text>"
        )
    for k in range(steps):
        x = left + k * cw + cw / 2
        label = html.escape(_tick(tokens[position + k].strip() or tokens[position + k]))
        ty = top + plot_h + 12
        out.append(f"<text x='{x}' y='{ty}' transform='rotate(60 {x} {ty})'>{label}</text>")
    for name, curve, color, dash in series:
        points = [(left + k * cw + cw / 2, y(float(v)), float(v)) for k, v in enumerate(curve)]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
        out.append(
            f"<polyline points='{path}' fill='none' stroke='{color}' stroke-width='2' "
            f"stroke-dasharray='{dash}'/>"
        )
        for k, (px, py, v) in enumerate(points):
            tip = html.escape(f"{name} at #{position + k} {tokens[position + k]!r}: {v:.3g}")
            out.append(
                f"<circle cx='{px:.1f}' cy='{py:.1f}' r='3' fill='{color}'><title>{tip}</title></circle>"
            )
    for k, (name, _, color, dash) in enumerate(series):
        ly = top + plot_h + 70 + 16 * k
        out.append(
            f"<line x1='{left}' x2='{left + 24}' y1='{ly}' y2='{ly}' stroke='{color}' stroke-width='2' "
            f"stroke-dasharray='{dash}'/><text x='{left + 30}' y='{ly + 3}'>{html.escape(name)}</text>"
        )
    out.append("</svg>")
    return "".join(out)
