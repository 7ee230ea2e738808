"""The simulator's charts: ``chart.png`` (one run) and ``comparison.png`` (two configs on the same axes).

Per pool, two panels on one time axis:

* **the curves**: active builds (a filled area) against full-speed capacity (ready builders ×
  builds each), with replicas (``spec.replicas``: starting pods included) dashed on top, so
  the capacity line shows beside it and the gap between them is the pods still starting.
  Builds and replicas share one scale (a replica carries ``capacity`` builds): builds on
  the left, replicas on the right, both with integer ticks;
* **a strip of scale events** counted per time bin, scale-ups above the line and
  scale-downs below: a week's thousands of scales read as a rate, and never cover the
  curves.

A long run (more samples than the chart has pixels for) is drawn per bin: each curve's
mean over the bin, and the busiest instant of builds as a thin line; the axis says so.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global
figure state), so it works on a headless machine. Imported only by ``simulate``: the live
controller never loads matplotlib. :func:`run_figure` and :func:`comparison_figure` return
the figure unsaved, for tests to inspect.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # matplotlib's own dependency: its secondary axis hands over arrays
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator
from numpy.typing import ArrayLike

from autoscaler.simulator.outcome import PoolRun, Run, Series

BIN_WIDTHS_SECONDS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400)
"""The time bins a chart may use: round durations a reader can say ("per 10 min", "per 1 h")."""
MAX_BINS = 200
"""The narrowest width of :data:`BIN_WIDTHS_SECONDS` that gives at most this many bins is used:
about 5 pixels a bin on the 12-inch chart, so each bin's bar stays visible (a day: 10 min bins;
a week: 1 h)."""
MAX_RAW_SAMPLES = 5_000
"""Above this many samples in a pool, its curves are drawn per bin: about four samples per
pixel column of the plot, beyond which a step line is a solid band (a day has ~2,500, a
week ~55,000)."""
WIDTH_INCHES = 12.0
CURVES_INCHES = 3.0
STRIP_INCHES = 1.0
DPI = 100

BUILDS = "tab:blue"
CAPACITY = "tab:green"
REPLICAS = "tab:orange"
UP = "tab:red"
DOWN = "tab:purple"
A_COLOR = "tab:blue"
B_COLOR = "tab:red"


@dataclass(frozen=True, kw_only=True)
class Frame:
    """The time axis every panel of one figure shares: its unit, ticks and bins."""

    span_seconds: float
    unit_seconds: float
    """3600 (hours) for runs longer than 4 h, else 60 (minutes)."""
    tick_units: float
    """Major ticks every this many units (a week: every 24 h)."""
    bin_seconds: float
    binned: bool
    """Whether the curves are drawn per bin (the scale-event strip always is)."""

    @classmethod
    def of(cls, span_seconds: float, *, samples: int) -> Frame:
        span = max(span_seconds, 1.0)
        hours = span > 4 * 3600
        unit = 3600.0 if hours else 60.0
        steps = (1, 2, 3, 6, 12, 24, 48, 168, 336, 720) if hours else (1, 2, 5, 10, 15, 30, 60)
        tick = next((s for s in steps if span / unit / s <= 10), steps[-1])
        width = next((w for w in BIN_WIDTHS_SECONDS if span / w <= MAX_BINS), None)
        if width is None:
            width = math.ceil(span / MAX_BINS / 86_400) * 86_400
        return cls(span_seconds=span, unit_seconds=unit, tick_units=tick, bin_seconds=float(width),
                   binned=samples > MAX_RAW_SAMPLES)  # fmt: skip

    @property
    def edges(self) -> list[float]:
        """The bins' edges in seconds: every ``bin_seconds`` from 0, the last one cut at the span's end."""
        count = math.ceil(self.span_seconds / self.bin_seconds)
        return [min(i * self.bin_seconds, self.span_seconds) for i in range(count + 1)]

    @property
    def bin_label(self) -> str:
        """The bin width as a reader says it: ``10 min``, ``1 h``."""
        seconds = self.bin_seconds
        if seconds < 60:
            return f"{seconds:g} s"
        if seconds < 3600:
            return f"{seconds / 60:g} min"
        return f"{seconds / 3600:g} h"

    @property
    def axis_label(self) -> str:
        unit = "hours" if self.unit_seconds == 3600 else "minutes"
        return f"{unit} since the trace's start"

    def x(self, seconds: Sequence[float]) -> list[float]:
        return [t / self.unit_seconds for t in seconds]


@dataclass(frozen=True, kw_only=True)
class Curve:
    """One series as drawn: a step function over ``edges`` (seconds); ``peak`` only when binned."""

    edges: list[float]
    values: list[float]
    peak: list[float] | None = None


def step_bins(
    times: Sequence[float], values: Sequence[float], edges: Sequence[float]
) -> tuple[list[float], list[float]]:
    """The time-weighted mean and the maximum, per bin, of a step function that holds
    ``values[i]`` from ``times[i]`` until the next sample (the first value also before it)."""
    means: list[float] = []
    peaks: list[float] = []
    count = len(times)
    k = 0
    for low, high in itertools.pairwise(edges):
        while k + 1 < count and times[k + 1] <= low:
            k += 1
        area = 0.0
        peak = -math.inf
        at, j = low, k
        while True:
            following = times[j + 1] if j + 1 < count else math.inf
            until = min(following, high)
            area += values[j] * (until - at)
            peak = max(peak, values[j])
            if following >= high:
                break
            at, j = following, j + 1
        means.append(area / (high - low) if high > low else float(values[j]))
        peaks.append(float(peak))
    return means, peaks


def curve(series: Series, values: Sequence[float], frame: Frame) -> Curve:
    """``values`` (one of ``series``' lists) as drawn in ``frame``: every sample, or per bin."""
    if frame.binned:
        edges = frame.edges
        means, peaks = step_bins(series.times, values, edges)
        return Curve(edges=edges, values=means, peak=peaks)
    end = max(frame.span_seconds, series.times[-1])
    return Curve(edges=[*series.times, end], values=[float(v) for v in values])


def scale_counts(pool_run: PoolRun, edges: Sequence[float]) -> tuple[list[int], list[int]]:
    """Scale-ups and scale-downs per bin (a scale at a bin's start counts in that bin)."""
    bins = len(edges) - 1
    ups, downs = [0] * bins, [0] * bins
    last = pool_run.scales[0][1]
    for at, replicas in pool_run.scales[1:]:
        index = min(max(bisect.bisect_right(edges, at) - 1, 0), bins - 1)
        (ups if replicas > last else downs)[index] += 1
        last = replicas
    return ups, downs


def _panels(figure: Figure, count: int, frame: Frame) -> list[tuple[Axes, Axes]]:
    """Per pool, the curves' axes above its scale-event strip, all on one time axis."""
    grid = figure.add_gridspec(2 * count, 1, height_ratios=[CURVES_INCHES, STRIP_INCHES] * count)
    panels: list[tuple[Axes, Axes]] = []
    first: Axes | None = None
    for i in range(count):
        curves = figure.add_subplot(grid[2 * i], sharex=first)
        first = first or curves
        strip = figure.add_subplot(grid[2 * i + 1], sharex=first)
        curves.tick_params(labelbottom=False)
        if i < count - 1:
            strip.tick_params(labelbottom=False)
        for ax in (curves, strip):
            ax.grid(axis="x", color="0.9", linewidth=0.6)
            ax.set_axisbelow(True)
        panels.append((curves, strip))
    assert first is not None  # noqa: S101 - count ≥ 1
    first.set_xlim(0, frame.span_seconds / frame.unit_seconds)
    first.xaxis.set_major_locator(MultipleLocator(frame.tick_units))
    panels[-1][1].set_xlabel(frame.axis_label)
    return panels


def _figure(count: int) -> Figure:
    height = (CURVES_INCHES + STRIP_INCHES) * max(1, count) + 0.6
    figure = Figure(figsize=(WIDTH_INCHES, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _replica_axis(ax: Axes, capacity: int, label: str) -> None:
    """Replicas on the right, on the builds' scale (one replica carries ``capacity`` builds)."""

    def to_replicas(builds: ArrayLike) -> ArrayLike:
        return np.asarray(builds) / capacity

    def to_builds(replicas: ArrayLike) -> ArrayLike:
        return np.asarray(replicas) * capacity

    right = ax.secondary_yaxis("right", functions=(to_replicas, to_builds))
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_ylabel(label)


def _builds_axis(ax: Axes, top: float, frame: Frame) -> None:
    ax.set_ylim(0, 1.3 * max(top, 1.0))  # head-room for the legend
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"builds (mean per {frame.bin_label})" if frame.binned else "builds")


def _strip_axis(strip: Axes, frame: Frame, most: int) -> None:
    strip.axhline(0, color="0.4", linewidth=0.6)
    strip.set_ylim(-1.2 * max(most, 1), 1.2 * max(most, 1))
    strip.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4, symmetric=True))
    strip.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{abs(value):g}"))
    strip.set_ylabel(f"scales per\n{frame.bin_label}", fontsize="small")
    _side_legend(strip)


def _side_legend(strip: Axes) -> None:
    """The strip's legend in the right margin (the replicas axis' labels make room for it
    above): inside, it would cover bars wherever it went."""
    strip.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="x-small", frameon=False)


def _draw_builds(ax: Axes, builds: Curve, frame: Frame, *, color: str, label: str) -> None:
    x = frame.x(builds.edges)
    ax.stairs(builds.values, x, fill=True, facecolor=color, alpha=0.25, linewidth=0, label=label, zorder=1)
    ax.stairs(builds.values, x, baseline=None, color=color, linewidth=0.6, alpha=0.9, zorder=1)
    if builds.peak is not None:
        ax.stairs(builds.peak, x, baseline=None, color=color, linewidth=0.6, linestyle=(0, (1, 1)), zorder=1,
                  label=f"peak in each {frame.bin_label}")  # fmt: skip


def run_figure(run: Run, *, title: str) -> Figure:
    """One run: per pool, builds, capacity and replicas, and its scale events per bin."""
    pools = [r for r in run.pools.values() if r.series is not None]
    samples = max((len(r.series.times) for r in pools if r.series is not None), default=0)
    frame = Frame.of(run.span_seconds, samples=samples)
    figure = _figure(len(pools))
    edges = frame.edges
    for (ax, strip), pool_run in zip(_panels(figure, max(1, len(pools)), frame), pools, strict=False):
        series = pool_run.series
        assert series is not None  # noqa: S101 - filtered above
        each = pool_run.capacity
        builds = curve(series, series.active_builds, frame)
        capacity = curve(series, series.capacity, frame)
        replicas = curve(series, [r * each for r in series.replicas], frame)
        _draw_builds(ax, builds, frame, color=BUILDS, label="active builds")
        ax.stairs(capacity.values, frame.x(capacity.edges), baseline=None, color=CAPACITY, linewidth=2.0, zorder=3,
                  label=f"capacity: ready builders × {each} builds")  # fmt: skip
        ax.stairs(replicas.values, frame.x(replicas.edges), baseline=None, color=REPLICAS, linewidth=1.0, zorder=4,
                  linestyle=(0, (4, 2)), label="replicas (starting pods too)")  # fmt: skip
        top = max([*builds.values, *(builds.peak or []), *capacity.values, *replicas.values])
        _builds_axis(ax, top, frame)
        _replica_axis(ax, each, f"replicas (× {each} builds each)")
        ax.legend(loc="upper left", fontsize="small", ncols=4)
        ax.set_label(f"pool {pool_run.name}")
        strip.set_label(f"scale events {pool_run.name}")
        m = pool_run.metrics
        ax.set_title(f"pool {pool_run.name} ({pool_run.arch}): {m.builder_seconds / 3600:,.1f} builder-hours, "
                     f"peak {m.peak_replicas} replicas, {m.scale_events:,} scale events")  # fmt: skip

        ups, downs = scale_counts(pool_run, edges)
        centers = frame.x([(low + high) / 2 for low, high in itertools.pairwise(edges)])
        width = 0.8 * frame.bin_seconds / frame.unit_seconds
        up_at = [(x, n) for x, n in zip(centers, ups, strict=True) if n]
        down_at = [(x, n) for x, n in zip(centers, downs, strict=True) if n]
        strip.bar([x for x, _ in up_at], [n for _, n in up_at], width=width, color=UP, label="ups")
        strip.bar([x for x, _ in down_at], [-n for _, n in down_at], width=width, color=DOWN, label="downs")
        _strip_axis(strip, frame, max([*ups, *downs, 0]))
    figure.suptitle(title)
    return figure


def chart(run: Run, path: Path, *, title: str) -> None:
    """``chart.png``: :func:`run_figure` as a PNG."""
    run_figure(run, title=title).savefig(path, format="png")


def comparison_figure(a: Run, b: Run, *, title: str) -> Figure:
    """Two configs on one trace: per pool, A's and B's capacity on the same axes over the
    builds (as run under A; B's differ only by how long they took), and each one's scale
    events per bin. Replicas are left out: capacity is what the builds got, and the
    titles give each one's cost. The legends say just A and B (a file name would crowd
    them off the axes): ``title`` says which config is which."""
    order = [*a.pools, *(name for name in b.pools if name not in a.pools)]
    pairs = [(a.pools.get(name), b.pools.get(name)) for name in order]
    samples = max(
        (len(r.series.times) for pair in pairs for r in pair if r is not None and r.series is not None), default=0
    )
    frame = Frame.of(max(a.span_seconds, b.span_seconds), samples=samples)
    figure = _figure(len(pairs))
    edges = frame.edges
    for (ax, strip), (name, pair) in zip(_panels(figure, max(1, len(pairs)), frame), zip(order, pairs, strict=True),
                                        strict=False):  # fmt: skip
        drawn = [(label, r, color) for label, r, color in zip("AB", pair, (A_COLOR, B_COLOR), strict=True)
                 if r is not None and r.series is not None]  # fmt: skip
        base = drawn[0][1].series if drawn else None
        top = 0.0
        if base is not None:
            builds = curve(base, base.active_builds, frame)
            _draw_builds(ax, builds, frame, color="0.45", label=f"active builds under {drawn[0][0]}")
            top = max([*builds.values, *(builds.peak or [])])
        widths = ((2.6, 0.55), (1.1, 1.0))  # A broad and pale underneath, B thin on top: both show where equal
        most = 0
        parts = []
        for (label, pool_run, color), (linewidth, alpha) in zip(drawn, widths, strict=False):
            series = pool_run.series
            assert series is not None  # noqa: S101 - filtered above
            capacity = curve(series, series.capacity, frame)
            ax.stairs(capacity.values, frame.x(capacity.edges), baseline=None, color=color, linewidth=linewidth,
                      alpha=alpha, zorder=3,
                      label=f"{label}: capacity, ready × {pool_run.capacity} builds")  # fmt: skip
            top = max(top, *capacity.values)
            counts = [u + d for u, d in zip(*scale_counts(pool_run, edges), strict=True)]
            strip.stairs(counts, frame.x(edges), baseline=None, color=color, linewidth=linewidth, alpha=alpha,
                         label=label)  # fmt: skip
            most = max(most, *counts)
            m = pool_run.metrics
            parts.append(f"{label} {m.builder_seconds / 3600:,.1f} builder-h, {m.scale_events:,} scales")
        _builds_axis(ax, top, frame)
        each = {r.capacity for _, r, _ in drawn}
        if len(each) == 1:  # one scale for ready builders only if A and B give a builder the same capacity
            _replica_axis(ax, each.pop(), "ready builders")
        ax.legend(loc="upper left", fontsize="small", ncols=4)
        ax.set_title(f"pool {name}: " + "; ".join(parts))
        ax.set_label(f"pool {name}")
        strip.set_label(f"scale events {name}")
        strip.set_ylim(0, 1.2 * max(most, 1))
        strip.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
        strip.set_ylabel(f"scales per\n{frame.bin_label}", fontsize="small")
        _side_legend(strip)
    figure.suptitle(title)
    return figure


def comparison_chart(a: Run, b: Run, path: Path, *, title: str) -> None:
    """``comparison.png``: :func:`comparison_figure` as a PNG."""
    comparison_figure(a, b, title=title).savefig(path, format="png")
