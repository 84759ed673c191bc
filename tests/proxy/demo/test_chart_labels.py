"""The report chart's phase labels: however close the phases, no label covers another,
and each stays beside its phase's line, inside the chart."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.demo.chart_labels import label_lanes, place_phase_labels

# The phases of a full demo (README, 2026-11-24): shadow and the live steps seconds apart.
DEMO_PHASES = [
    (1.0, "capturing teacher answers"),
    (38.0, "training"),
    (307.0, "shadow"),
    (321.0, "live 10%"),
    (334.0, "live 25%"),
    (350.0, "live 50%"),
    (371.0, "live 100%"),
]


def test_spans_apart_share_the_top_lane() -> None:
    assert label_lanes([(0, 10), (20, 30), (40, 50)]) == [0, 0, 0]


def test_a_span_meeting_another_goes_to_the_next_free_lane() -> None:
    assert label_lanes([(0, 10), (5, 15), (8, 20), (12, 22), (30, 40)]) == [0, 1, 2, 0, 0]


def test_spans_in_one_lane_never_meet() -> None:
    spans = [(x, x + width) for x, width in zip(range(0, 200, 7), itertools.cycle([9, 30, 15]))]
    lanes = label_lanes(spans, gap=2)
    for (a, lane_a), (b, lane_b) in itertools.combinations(zip(spans, lanes, strict=True), 2):
        if lane_a == lane_b:
            assert a[1] + 2 <= b[0] or b[1] + 2 <= a[0]


@pytest.fixture
def chart() -> Iterator[Any]:
    """An axis shaped as the report's share-of-traffic chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (share, _cost) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, dpi=110)
    share.set_xlim(0, 420)
    share.set_ylim(0, 100)
    figure.tight_layout()
    yield share
    plt.close(figure)


def boxes(axis: Any, labels: list[Any]) -> list[Any]:
    axis.figure.canvas.draw()
    renderer = axis.figure.canvas.get_renderer()
    return [label.get_window_extent(renderer) for label in labels]


@pytest.mark.parametrize(
    "phases",
    [
        DEMO_PHASES,
        [(300.0 + i, f"live {p}%") for i, p in enumerate((10, 25, 50, 100))],  # a second apart
        [(410.0, "live 100%"), (415.0, "rolled back to shadow")],  # at the right edge
    ],
    ids=["demo", "crowded", "right-edge"],
)
def test_no_two_phase_labels_overlap(chart: Any, phases: list[tuple[float, str]]) -> None:
    found = boxes(chart, place_phase_labels(chart, phases, top=100))
    for a, b in itertools.combinations(found, 2):
        assert not a.overlaps(b), (a, b)


def test_labels_stay_beside_their_lines_inside_the_chart(chart: Any) -> None:
    labels = place_phase_labels(chart, DEMO_PHASES, top=100)
    area = chart.get_window_extent()
    for (at, _name), box in zip(DEMO_PHASES, boxes(chart, labels), strict=True):
        line = chart.transData.transform((at, 100))[0]
        assert box.x0 >= line or box.x1 <= line  # beside the line, never across it
        assert min(abs(box.x0 - line), abs(box.x1 - line)) < 10
        assert area.x0 <= box.x0
        assert box.x1 <= area.x1
        assert area.y0 <= box.y0
        assert box.y1 <= area.y1


def test_phases_far_apart_keep_one_row(chart: Any) -> None:
    phases = [(1.0, "capturing teacher answers"), (150.0, "training"), (300.0, "shadow")]
    tops = {round(box.y1) for box in boxes(chart, place_phase_labels(chart, phases, top=100))}
    assert len(tops) == 1
