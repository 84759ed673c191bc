"""Phase labels on the demo's chart that never cover each other.

Phases can follow each other within seconds (shadow, then live 10% moments later), so a
label at each phase's line would print over its neighbour. Each label is a horizontal box
beside its line at the top of the chart; :func:`label_lanes` puts each in the highest lane
where it meets no other, and :func:`place_phase_labels` measures the real boxes and places
them so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GAP_PIXELS = 3.0  # between a phase's line and its label, and between labels in a lane


def label_lanes(spans: Sequence[tuple[float, float]], gap: float = 0.0) -> list[int]:
    """For each span ``(left, right)``, the lane (0 is the top) it goes in: the first whose
    spans, ``gap`` apart, it does not meet. Spans are taken from left to right."""
    lanes: list[float] = []  # where each lane's last span ends
    placed = [0] * len(spans)
    for index in sorted(range(len(spans)), key=lambda i: spans[i][0]):
        left, right = spans[index]
        lane = next((n for n, end in enumerate(lanes) if left >= end + gap), len(lanes))
        if lane == len(lanes):
            lanes.append(right)
        else:
            lanes[lane] = right
        placed[index] = lane
    return placed


def place_phase_labels(axis: Any, phases: Sequence[tuple[float, str]], *, top: float) -> list[Any]:
    """Label each phase ``(x, name)`` beside its line, below ``top`` (in data units) on
    ``axis``, in lanes so that no two labels meet; a label that would run past the axis's
    right edge sits left of its line. Call it once the figure's layout is final. Returns
    the labels (matplotlib ``Annotation`` s)."""
    figure = axis.figure
    renderer = figure.canvas.get_renderer()
    right_edge = axis.get_window_extent(renderer).x1
    labels = []
    spans = []
    for at, name in phases:
        label = axis.annotate(
            name,
            (at, top),
            xytext=(GAP_PIXELS, -GAP_PIXELS),
            textcoords="offset pixels",
            fontsize=7,
            va="top",
            ha="left",
            bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "alpha": 0.85, "lw": 0},
        )
        box = label.get_window_extent(renderer)
        x = axis.transData.transform((at, top))[0]
        if x + GAP_PIXELS + box.width > right_edge:
            label.set_horizontalalignment("right")
            label.xyann = (-GAP_PIXELS, -GAP_PIXELS)
            spans.append((x - GAP_PIXELS - box.width, x - GAP_PIXELS))
        else:
            spans.append((x + GAP_PIXELS, x + GAP_PIXELS + box.width))
        labels.append((label, box.height))
    lanes = label_lanes(spans, gap=GAP_PIXELS)
    step = max((height for _, height in labels), default=0.0) + GAP_PIXELS
    for (label, _), lane in zip(labels, lanes, strict=True):
        dx, _ = label.xyann
        label.xyann = (dx, -GAP_PIXELS - lane * step)
    return [label for label, _ in labels]
