"""Drawing a run's trials and front: a PNG (matplotlib) and an interactive HTML (plotly).

What is drawn is computed once (`front_plot_info`), apart from how it is drawn: only trained
trials sit on the accuracy axis; over-budget trials (never trained) and presets that were not
evaluated sit on a "not trained" strip under it, by their cost, never at "top-1 0". The cost (x)
is MADDs, or the predicted latency for a run searched with ``--objective latency``; there the
MADD budget is still marked, on the trials over it.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .files import write_atomic
from .results import trained_rows


@dataclass
class Point:
    label: str  # hover text
    madds_m: float  # MADDs in millions (x, by default)
    top1: float | None  # y: proxy top-1, None for points that were not trained
    latency_ms: float | None = None  # predicted latency (x, for the latency objective)
    over_madds: bool = False  # over the MADD budget (never trained)


@dataclass
class FrontPlotInfo:
    title: str
    budget_m: float
    trials: list[Point]  # trained, off the front
    front: list[Point]  # the Pareto front, by the objective's cost
    untrained: list[Point]  # trained to chance level: off the front
    over_budget: list[Point]  # over a budget: never trained
    presets: list[Point]  # the paper's presets in the space; top1 None when not evaluated
    objective: str = "madds"  # x: madds or latency
    latency_budget: float | None = None  # ms
    resolution: int = 224  # px: where MADDs and latency are counted (the space's)

    def x(self, p: Point) -> float | None:
        return p.latency_ms if self.objective == "latency" else p.madds_m

    @property
    def xlabel(self) -> str:
        at = f"{self.resolution}x{self.resolution} px"
        if self.objective == "latency":
            return f"latency at {at} (ms, predicted on this machine)"
        return f"MADDs at {at} (millions)"

    @property
    def budget_x(self) -> tuple[float, str] | None:
        """Where the x axis's budget line goes and its label (None: no budget on this axis)."""
        if self.objective != "latency":
            return self.budget_m, f"budget {self.budget_m:g}M"
        if self.latency_budget is None:
            return None
        return self.latency_budget, f"latency budget {self.latency_budget:g} ms"


def _hover(r: dict) -> str:
    top1 = "not trained" if r.get("top1") is None else f"top-1 {r['top1']:.4f}"
    name = f" ({r['preset']})" if r.get("preset") else ""
    latency = "" if r.get("latency_ms") is None else f", {r['latency_ms']:.1f} ms"
    if r.get("measured_ms") is not None:
        latency += f" (measured {r['measured_ms']:.1f} ms)"
    return f"trial {r['trial']}{name}: {r['madds'] / 1e6:.1f}M MADDs{latency}, {top1}"


def front_plot_info(
    rows: list[dict],
    front: list[dict],
    *,
    budget: int,
    presets: dict[str, int],
    title: str = "",
    objective: str = "madds",
    latency_budget: float | None = None,
    preset_latency: dict[str, float] | None = None,
    resolution: int = 224,
) -> FrontPlotInfo:
    """What the plots show, from the run's rows; presets at their own trial's top-1 when
    evaluated. For ``objective="latency"`` x is the predicted latency (points without one are
    left out) and trials over the MADD budget are marked as such."""
    preset_latency = preset_latency or {}
    latency = objective == "latency"
    on_front = {r["trial"] for r in front}
    trained = trained_rows(rows)
    measured = {
        r["preset"]: r for r in sorted(trained, key=lambda r: -r["trial"]) if r.get("preset")
    }
    untrained = [r for r in rows if r.get("untrained") and r.get("top1") is not None]
    over = [r for r in rows if r.get("feasible") is False and r.get("madds") is not None]
    preset_points = []
    for name, madds in sorted(presets.items(), key=lambda kv: kv[1]):
        if latency and name not in preset_latency:
            continue
        r = measured.get(name)
        state = f"top-1 {r['top1']:.4f} (trial {r['trial']})" if r else "not evaluated"
        ms = preset_latency.get(name)
        preset_points.append(
            Point(
                f"{name}: {madds / 1e6:.1f}M MADDs"
                + ("" if ms is None else f", {ms:.1f} ms")
                + f", {state}",
                madds / 1e6,
                r["top1"] if r else None,
                ms,
            )
        )

    def points(rs, top1=True):
        return [
            Point(
                _hover(r),
                r["madds"] / 1e6,
                r.get("top1") if top1 else None,
                r.get("latency_ms"),
                r["madds"] > budget,
            )
            for r in rs
            if not latency or r.get("latency_ms") is not None
        ]

    counts = f"{len(trained)} trained, {len(untrained)} at chance level, {len(over)} over budget"
    return FrontPlotInfo(
        title=f"{title}\n({counts})" if title else counts,
        budget_m=budget / 1e6,
        trials=points([r for r in trained if r["trial"] not in on_front]),
        front=points(front),
        untrained=points(untrained),
        over_budget=points(over, top1=False),
        presets=preset_points,
        objective=objective,
        latency_budget=latency_budget,
        resolution=resolution,
    )


def _over(info: FrontPlotInfo) -> list[tuple[list[Point], str, str]]:
    """The over-budget points as drawn, ``(points, marker, label)``: with a latency budget, the
    trials over the MADD budget apart from those over the latency budget only."""
    if info.latency_budget is None:
        groups = [(info.over_budget, "|", "over budget (not trained)")]
    else:
        groups = [
            (
                [p for p in info.over_budget if p.over_madds],
                "|",
                f"over the MADD budget {info.budget_m:g}M (not trained)",
            ),
            (
                [p for p in info.over_budget if not p.over_madds],
                "x",
                f"over the latency budget {info.latency_budget:g} ms (not trained)",
            ),
        ]
    return [g for g in groups if g[0]]


def front_figure(info: FrontPlotInfo):
    """The PNG's matplotlib figure (no pyplot: the user's backend stays)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.6), dpi=110, layout="constrained")
    ax, strip = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [12, 1.8]})

    labels = _draw_trained(ax, info)
    _draw_not_trained(strip, info)
    line = info.budget_x
    for a in (ax, strip):
        if line is not None:  # under every point
            a.axvline(line[0], ls="--", c="tab:red", lw=1, label=line[1] if a is ax else None,
                      zorder=1)  # fmt: skip
        a.grid(alpha=0.3)
    everything = _xs(
        info, info.trials + info.front + info.untrained + info.over_budget + info.presets
    )
    everything += [line[0]] if line is not None else []
    if everything:
        pad = 0.05 * (max(everything) - min(everything) or 1.0)
        ax.set_xlim(min(everything) - pad, max(everything) + pad)
    strip.set_ylim(-1, 2.2)  # room above the markers for the presets' labels
    strip.set_yticks([])
    strip.set_ylabel("not\ntrained", fontsize=7, rotation=0, ha="right", va="center")
    strip.set_xlabel(info.xlabel)
    ax.margins(y=0.08)  # room for the stars at the top and bottom points
    ax.set_ylabel("proxy top-1 (held out)")
    # wrapped: a run's title names its data path, which may be longer than the axes are wide
    ax.set_title("\n".join(textwrap.fill(t, 90) for t in info.title.splitlines()), fontsize=9)
    handles, names = ax.get_legend_handles_labels()
    more = strip.get_legend_handles_labels()
    # the legend outside the axes covers no point
    fig.legend(handles + more[0], names + more[1], fontsize=8, loc="outside right upper")
    _place_labels(fig, ax, labels, [] if line is None else [line[0]])
    return fig


# Where a preset's label may go, in points from its star, in order of preference.
_SPOTS = (
    (6, -14, "left"), (6, 8, "left"), (-6, -14, "right"), (-6, 8, "right"),
    (0, 12, "center"), (0, -24, "center"),
)  # fmt: skip


def _place_labels(fig, ax, labels: list, lines: list[float]) -> None:
    """Put each preset's label at the first spot where it covers no point, no other label and no
    budget line, inside the axes (else where it covers the least)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not labels:
        return
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # the constrained layout, so that display coordinates hold
    offsets = [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
    points = ax.transData.transform(np.vstack(offsets)) if offsets else np.empty((0, 2))
    xs = [ax.transData.transform((x, 0))[0] for x in lines]
    frame, taken = ax.get_window_extent(renderer), []

    def cost(box) -> int:
        near = 4  # pixels: a dot's radius
        hits = sum(
            box.x0 - near <= x <= box.x1 + near and box.y0 - near <= y <= box.y1 + near
            for x, y in points
        )
        crossed = sum(box.x0 <= x <= box.x1 for x in xs)
        overlaps = sum(box.overlaps(t) for t in taken)
        outside = not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1))
        return 10 * (hits + overlaps + outside) + crossed

    def put(text, spot) -> int:
        text.xyann = spot[:2]
        text.set_horizontalalignment(spot[2])
        return cost(text.get_window_extent(renderer))

    for text in labels:
        costs = []
        for spot in _SPOTS:
            costs.append(put(text, spot))
            if costs[-1] == 0:
                break
        put(text, _SPOTS[costs.index(min(costs))])
        taken.append(text.get_window_extent(renderer))


def _xs(info: FrontPlotInfo, points) -> list[float]:
    return [info.x(p) for p in points]


def _draw_trained(ax, info: FrontPlotInfo) -> list:
    """The trained trials, the front and the evaluated presets, by cost and top-1; returns the
    presets' labels (placed once the figure is laid out)."""
    if info.trials:  # an empty scatter would still put "trials" in the legend
        ax.scatter(
            _xs(info, info.trials),
            [p.top1 for p in info.trials],
            s=22,
            c="0.6",
            label="trials",
            zorder=3,
        )
    if info.untrained:
        ax.scatter(
            _xs(info, info.untrained),
            [p.top1 for p in info.untrained],
            s=22,
            facecolors="none",
            edgecolors="0.3",
            label="at chance level (off the front)",
            zorder=3,
        )
    if info.front:
        ax.step(_xs(info, info.front), [p.top1 for p in info.front], where="post", c="tab:blue")
        ax.scatter(
            _xs(info, info.front),
            [p.top1 for p in info.front],
            c="tab:blue",
            s=40,
            label="Pareto front",
            zorder=5,  # over the presets' stars: a preset on the front shows both
        )
    evaluated = [p for p in info.presets if p.top1 is not None]
    if not evaluated:
        return []
    ax.scatter(
        _xs(info, evaluated),
        [p.top1 for p in evaluated],
        marker="*",
        s=220,
        c="tab:orange",
        zorder=4,
        label="paper preset (evaluated)",
    )
    return [
        ax.annotate(
            p.label.split(":")[0],
            (info.x(p), p.top1),
            textcoords="offset points",
            xytext=_SPOTS[0][:2],
            fontsize=7,
            color="tab:orange",
            zorder=6,
        )
        for p in evaluated
    ]


def _draw_not_trained(strip, info: FrontPlotInfo) -> None:
    """Not trained (over budget, presets not evaluated): a strip of their own, by cost only."""
    for ps, marker, label in _over(info):
        strip.scatter(_xs(info, ps), [0] * len(ps), marker=marker, s=120, c="tab:red", label=label)
    missing = [p for p in info.presets if p.top1 is None]
    if missing:
        strip.scatter(
            _xs(info, missing),
            [0] * len(missing),
            marker="*",
            s=140,
            facecolors="none",
            edgecolors="tab:orange",
            zorder=5,
            label="paper preset (not evaluated)",
        )
        for p in missing:  # above its star, clear of the over-budget ticks beside it
            strip.annotate(
                p.label.split(":")[0],
                (info.x(p), 0),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                va="bottom",
                fontsize=7,
                color="tab:orange",
                zorder=6,  # over the budget line, on a ground of its own
                bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.85),
            )


def plot_front_png(path: Path, info: FrontPlotInfo) -> None:
    buf = io.BytesIO()
    front_figure(info).savefig(buf, format="png")
    write_atomic(path, buf.getvalue())


def front_html_figure(info: FrontPlotInfo):
    """The HTML's plotly figure; traces are drawn in order, so later ones lie on top."""
    import plotly.graph_objects as go

    fig = go.Figure()

    def trace(ps, name, y=None, **kw):
        if ps:
            fig.add_trace(
                go.Scatter(
                    x=[info.x(p) for p in ps],
                    y=y or [p.top1 for p in ps],
                    name=name,
                    hovertext=[p.label for p in ps],
                    hoverinfo="text",
                    **kw,
                )
            )

    trace(info.trials, "trials", mode="markers", marker=dict(color="gray"))
    trace(
        info.untrained,
        "at chance level (off the front)",
        mode="markers",
        marker=dict(color="gray", symbol="circle-open"),
    )
    evaluated = [p for p in info.presets if p.top1 is not None]
    trace(
        evaluated,
        "paper preset (evaluated)",
        mode="markers+text",
        text=[p.label.split(":")[0] for p in evaluated],
        textposition="bottom right",
        marker=dict(symbol="star", size=20, color="orange"),
    )
    # after the presets' stars, so that a preset on the front shows the front's dot inside it
    trace(
        info.front,
        "Pareto front",
        mode="lines+markers",
        line_shape="hv",
        marker=dict(color="royalblue"),
    )
    # Not trained: on a strip of its own below the accuracy axis (y2), never at top-1 0.
    strip = dict(yaxis="y2", mode="markers")
    symbols = {"|": "line-ns-open", "x": "x-thin-open"}
    for ps, marker, label in _over(info):
        trace(
            ps,
            label,
            y=[0] * len(ps),
            marker=dict(symbol=symbols[marker], size=14, color="red"),
            **strip,
        )
    missing = [p for p in info.presets if p.top1 is None]
    trace(
        missing,
        "paper preset (not evaluated)",
        y=[1] * len(missing),
        text=[p.label.split(":")[0] for p in missing],
        textposition=[
            "top right" if k % 2 == 0 else "bottom left" for k in range(len(missing))
        ],  # off neighbours
        marker=dict(symbol="star-open", size=13, color="orange"),
        **{**strip, "mode": "markers+text"},
    )
    _html_layout(fig, info)
    return fig


def _html_layout(fig, info: FrontPlotInfo) -> None:
    """The budget's line, the title, and the accuracy axis above the not-trained strip."""
    if info.budget_x is not None:
        fig.add_vline(
            x=info.budget_x[0],
            line_dash="dash",
            line_color="red",
            annotation_text=info.budget_x[1],
        )
    fig.update_layout(
        title=info.title.replace("\n", "<br>"),
        hovermode="closest",
        xaxis=dict(title=info.xlabel, anchor="y2"),  # under the strip
        yaxis=dict(title="proxy top-1 (held out)", domain=[0.26, 1.0]),
        yaxis2=dict(
            domain=[0.0, 0.18],
            range=[-0.8, 2.2],
            showticklabels=False,
            showgrid=False,
            title="not trained",
        ),
    )


def plot_front_html(path: Path, info: FrontPlotInfo) -> None:
    fig = front_html_figure(info)
    write_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))


def draw_run(
    run_dir: Path,
    rows: list[dict],
    front: list[dict],
    *,
    budget: int,
    presets: dict[str, int],
    title: str = "",
    objective: str = "madds",
    latency_budget: float | None = None,
    preset_latency: dict[str, float] | None = None,
    resolution: int = 224,
) -> FrontPlotInfo:
    """pareto.png and pareto.html of a run folder; returns what they show."""
    info = front_plot_info(
        rows,
        front,
        budget=budget,
        presets=presets,
        title=title,
        objective=objective,
        latency_budget=latency_budget,
        preset_latency=preset_latency,
        resolution=resolution,
    )
    plot_front_png(run_dir / "pareto.png", info)
    plot_front_html(run_dir / "pareto.html", info)
    return info
