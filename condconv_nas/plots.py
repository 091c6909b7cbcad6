"""Drawing a run's trials and front: a PNG (matplotlib) and an interactive HTML (plotly).

What is drawn is computed once (`front_plot_info`), apart from how it is drawn: only trained
trials sit on the accuracy axis; over-budget trials (never trained) and presets that were not
evaluated sit on a "not trained" strip under it, by their MADDs, never at "top-1 0".
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from .files import write_atomic
from .results import trained_rows


@dataclass
class Point:
    label: str  # hover text
    madds_m: float  # x: MADDs in millions
    top1: float | None  # y: proxy top-1, None for points that were not trained


@dataclass
class FrontPlotInfo:
    title: str
    budget_m: float
    trials: list[Point]  # trained, off the front
    front: list[Point]  # the Pareto front, by MADDs
    untrained: list[Point]  # trained to chance level: off the front
    over_budget: list[Point]  # never trained
    presets: list[Point]  # the paper's presets in the space; top1 None when not evaluated


def _hover(r: dict) -> str:
    top1 = "not trained" if r.get("top1") is None else f"top-1 {r['top1']:.4f}"
    name = f" ({r['preset']})" if r.get("preset") else ""
    return f"trial {r['trial']}{name}: {r['madds'] / 1e6:.1f}M MADDs, {top1}"


def front_plot_info(
    rows: list[dict], front: list[dict], *, budget: int, presets: dict[str, int], title: str = ""
) -> FrontPlotInfo:
    """What the plots show, from the run's rows; presets at their own trial's top-1 when
    evaluated."""
    on_front = {r["trial"] for r in front}
    trained = trained_rows(rows)
    measured = {
        r["preset"]: r for r in sorted(trained, key=lambda r: -r["trial"]) if r.get("preset")
    }
    untrained = [r for r in rows if r.get("untrained") and r.get("top1") is not None]
    over = [r for r in rows if r.get("feasible") is False and r.get("madds") is not None]
    preset_points = []
    for name, madds in sorted(presets.items(), key=lambda kv: kv[1]):
        r = measured.get(name)
        state = f"top-1 {r['top1']:.4f} (trial {r['trial']})" if r else "not evaluated"
        preset_points.append(
            Point(
                f"{name}: {madds / 1e6:.1f}M MADDs, {state}", madds / 1e6, r["top1"] if r else None
            )
        )

    def points(rs):
        return [Point(_hover(r), r["madds"] / 1e6, r.get("top1")) for r in rs]

    counts = f"{len(trained)} trained, {len(untrained)} at chance level, {len(over)} over budget"
    return FrontPlotInfo(
        title=f"{title} ({counts})" if title else counts,
        budget_m=budget / 1e6,
        trials=points([r for r in trained if r["trial"] not in on_front]),
        front=points(front),
        untrained=points(untrained),
        over_budget=[Point(_hover(r), r["madds"] / 1e6, None) for r in over],
        presets=preset_points,
    )


def plot_front_png(path: Path, info: FrontPlotInfo) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax, strip) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(10, 5.6),
        dpi=110,
        layout="constrained",
        gridspec_kw={"height_ratios": [12, 1]},
    )

    def xs(ps):
        return [p.madds_m for p in ps]

    ax.scatter(xs(info.trials), [p.top1 for p in info.trials], s=22, c="0.6", label="trials")
    if info.untrained:
        ax.scatter(
            xs(info.untrained),
            [p.top1 for p in info.untrained],
            s=22,
            facecolors="none",
            edgecolors="0.3",
            label="at chance level (off the front)",
        )
    if info.front:
        ax.step(xs(info.front), [p.top1 for p in info.front], where="post", c="tab:blue")
        ax.scatter(
            xs(info.front),
            [p.top1 for p in info.front],
            c="tab:blue",
            s=40,
            label="Pareto front",
            zorder=4,
        )
    evaluated = [p for p in info.presets if p.top1 is not None]
    if evaluated:
        ax.scatter(
            xs(evaluated),
            [p.top1 for p in evaluated],
            marker="*",
            s=140,
            c="tab:orange",
            zorder=5,
            label="paper preset (evaluated)",
        )
        for k, p in enumerate(
            evaluated
        ):  # staggered: neighbouring presets never print over each other
            ax.annotate(
                p.label.split(":")[0],
                (p.madds_m, p.top1),
                textcoords="offset points",
                xytext=(5, -12 - 11 * (k % 2)),
                fontsize=7,
                color="tab:orange",
            )
    # Not trained (over budget, presets not evaluated): a strip of their own, by MADDs only.
    if info.over_budget:
        strip.scatter(
            xs(info.over_budget),
            [0] * len(info.over_budget),
            marker="|",
            s=120,
            c="tab:red",
            label="over budget (not trained)",
        )
    missing = [p for p in info.presets if p.top1 is None]
    if missing:
        strip.scatter(
            xs(missing),
            [0] * len(missing),
            marker="*",
            s=140,
            facecolors="none",
            edgecolors="tab:orange",
            zorder=5,
            label="paper preset (not evaluated)",
        )
        for k, p in enumerate(missing):
            strip.annotate(
                p.label.split(":")[0],
                (p.madds_m, 0),
                textcoords="offset points",
                xytext=(6, 4 - 9 * (k % 2)),
                fontsize=7,
                color="tab:orange",
            )
    for a in (ax, strip):
        a.axvline(
            info.budget_m,
            ls="--",
            c="tab:red",
            lw=1,
            label=f"budget {info.budget_m:g}M" if a is ax else None,
        )
        a.grid(alpha=0.3)
    everything = xs(info.trials + info.front + info.untrained + info.over_budget + info.presets) + [
        info.budget_m
    ]
    pad = 0.05 * (max(everything) - min(everything) or 1.0)
    ax.set_xlim(min(everything) - pad, max(everything) + pad)
    strip.set_ylim(-1, 1)
    strip.set_yticks([])
    strip.set_ylabel("not\ntrained", fontsize=7, rotation=0, ha="right", va="center")
    strip.set_xlabel("MADDs (millions, full-size spec)")
    ax.set_ylabel("proxy top-1 (held out)")
    ax.set_title(info.title, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    more = strip.get_legend_handles_labels()
    fig.legend(
        handles + more[0], labels + more[1], fontsize=8, loc="outside right upper"
    )  # covers nothing
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def plot_front_html(path: Path, info: FrontPlotInfo) -> None:
    import plotly.graph_objects as go  # noqa: PLC0415

    fig = go.Figure()

    def trace(ps, name, y=None, **kw):
        if ps:
            fig.add_trace(
                go.Scatter(
                    x=[p.madds_m for p in ps],
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
    trace(
        info.front,
        "Pareto front",
        mode="lines+markers",
        line_shape="hv",
        marker=dict(color="royalblue"),
    )
    evaluated = [p for p in info.presets if p.top1 is not None]
    trace(
        evaluated,
        "paper preset (evaluated)",
        mode="markers+text",
        text=[p.label.split(":")[0] for p in evaluated],
        textposition="bottom right",
        marker=dict(symbol="star", size=13, color="orange"),
    )
    # Not trained: on a strip of its own below the accuracy axis (y2), never at top-1 0.
    strip = dict(yaxis="y2", mode="markers")
    trace(
        info.over_budget,
        "over budget (MADDs only, not trained)",
        y=[0] * len(info.over_budget),
        marker=dict(symbol="line-ns-open", size=14, color="red"),
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
    fig.add_vline(
        x=info.budget_m,
        line_dash="dash",
        line_color="red",
        annotation_text=f"budget {info.budget_m:g}M",
    )
    fig.update_layout(
        title=info.title,
        hovermode="closest",
        xaxis=dict(title="MADDs (millions, full-size spec)", anchor="y2"),  # under the strip
        yaxis=dict(title="proxy top-1 (held out)", domain=[0.26, 1.0]),
        yaxis2=dict(
            domain=[0.0, 0.18],
            range=[-0.8, 2.2],
            showticklabels=False,
            showgrid=False,
            title="not trained",
        ),
    )
    write_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))


def draw_run(
    run_dir: Path,
    rows: list[dict],
    front: list[dict],
    *,
    budget: int,
    presets: dict[str, int],
    title: str = "",
) -> FrontPlotInfo:
    """pareto.png and pareto.html of a run folder; returns what they show."""
    info = front_plot_info(rows, front, budget=budget, presets=presets, title=title)
    plot_front_png(run_dir / "pareto.png", info)
    plot_front_html(run_dir / "pareto.html", info)
    return info
