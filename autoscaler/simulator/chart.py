"""The simulator's chart (``chart.png``): per pool, builds, capacity and replicas over time.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global
figure state), so it works on a headless machine. Imported only by ``simulate``: the live
controller never loads matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from autoscaler.simulator.outcome import Run


def chart(run: Run, path: Path, *, title: str) -> None:
    """One panel per pool: active builds and full-speed capacity (builds), replicas (right
    axis) over time, each scale marked (▲ up, ▼ down)."""
    pools = [(r, r.series) for r in run.pools.values() if r.series is not None]
    figure = Figure(figsize=(12, 3.2 * max(1, len(pools))), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(1, len(pools)), 1, sharex=True, squeeze=False)[:, 0]
    hours = run.span_seconds > 4 * 3600
    scale = 3600.0 if hours else 60.0
    end = run.span_seconds / scale
    for ax, (pool_run, series) in zip(axes, pools, strict=False):
        times = [t / scale for t in series.times] + [end]
        ax.step(times, [*series.active_builds, series.active_builds[-1]], where="post", label="active builds",
                color="tab:blue", linewidth=0.8)  # fmt: skip
        ax.step(times, [*series.capacity, series.capacity[-1]], where="post", label="capacity (ready × builds each)",
                color="tab:green", linewidth=0.8, alpha=0.8)  # fmt: skip
        ax.set_ylabel("builds")
        ax.set_title(f"pool {pool_run.name} ({pool_run.arch}): {pool_run.metrics.scale_events} scale events")
        replicas = ax.twinx()
        replicas.step(times, [*series.replicas, series.replicas[-1]], where="post", label="replicas",
                      color="tab:orange", linewidth=1.0)  # fmt: skip
        ups: tuple[list[float], list[int]] = ([], [])
        downs: tuple[list[float], list[int]] = ([], [])
        last = pool_run.scales[0][1]
        for at, to in zip(series.scale_times, series.scale_to, strict=True):
            target = ups if to > last else downs
            target[0].append(at / scale)
            target[1].append(to)
            last = to
        replicas.scatter(ups[0], ups[1], marker="^", s=12, color="tab:red", label="scale up", zorder=3)
        replicas.scatter(downs[0], downs[1], marker="v", s=12, color="tab:purple", label="scale down", zorder=3)
        replicas.set_ylabel(f"replicas (× {pool_run.capacity} builds each)")
        # One scale for both axes (a replica carries ``capacity`` builds), head-room for the legend.
        busiest, most = max(series.active_builds), max(series.replicas) * pool_run.capacity
        top = 1.3 * max(busiest, most, 1)
        ax.set_ylim(0, top)
        replicas.set_ylim(0, top / pool_run.capacity)
        handles, labels = ax.get_legend_handles_labels()
        more_handles, more_labels = replicas.get_legend_handles_labels()
        ax.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize="small", ncols=5)
    axes[-1].set_xlabel("hours since the trace's start" if hours else "minutes since the trace's start")
    figure.suptitle(title)
    figure.savefig(path, format="png")
