"""Drawing a run's trials and front: a PNG (matplotlib) and an interactive HTML (plotly)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List

from .results import trained_rows, write_atomic


def _split(rows):
    infeasible = [r for r in rows if r.get("feasible") is False and r.get("madds") is not None]
    return trained_rows(rows), infeasible


def plot_front_png(path: Path, rows: List[Dict], front: List[Dict], *, budget: int, presets: Dict[str, int]) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    feasible, infeasible = _split(rows)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.scatter([r["madds"] / 1e6 for r in feasible], [r["top1"] for r in feasible], s=22, c="0.6", label="trials")
    if infeasible:
        ax.scatter([r["madds"] / 1e6 for r in infeasible], [0.0] * len(infeasible), marker="x", c="tab:red",
                   s=22, label="over budget (not trained)")
    if front:
        ax.step([r["madds"] / 1e6 for r in front], [r["top1"] for r in front], where="post", c="tab:blue")
        ax.scatter([r["madds"] / 1e6 for r in front], [r["top1"] for r in front], c="tab:blue", s=40, label="Pareto front")
    ax.axvline(budget / 1e6, ls="--", c="tab:red", lw=1, label=f"budget {budget / 1e6:g}M")
    evaluated = {r.get("preset"): r for r in feasible if r.get("preset")}
    for name, madds in presets.items():
        r = evaluated.get(name)
        y = r["top1"] if r else 0.0
        ax.scatter([madds / 1e6], [y], marker="*", s=90, c="tab:orange", zorder=5)
        ax.annotate(name, (madds / 1e6, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("MADDs (millions, full-size spec)")
    ax.set_ylabel("proxy top-1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def plot_front_html(path: Path, rows: List[Dict], front: List[Dict], *, budget: int, presets: Dict[str, int]) -> None:
    import plotly.graph_objects as go  # noqa: PLC0415
    feasible, infeasible = _split(rows)

    def hover(r):
        return f"trial {r['trial']}<br>{r['madds'] / 1e6:.1f}M MADDs<br>top-1 {r['top1']}<br>spec {r.get('spec_id')}"
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r["madds"] / 1e6 for r in feasible], y=[r["top1"] for r in feasible], mode="markers",
                             name="trials", marker=dict(color="gray"), text=[hover(r) for r in feasible],
                             hoverinfo="text"))
    if infeasible:
        fig.add_trace(go.Scatter(x=[r["madds"] / 1e6 for r in infeasible], y=[0] * len(infeasible), mode="markers",
                                 name="over budget", marker=dict(symbol="x", color="red")))
    fig.add_trace(go.Scatter(x=[r["madds"] / 1e6 for r in front], y=[r["top1"] for r in front], mode="lines+markers",
                             line_shape="hv", name="Pareto front", text=[hover(r) for r in front], hoverinfo="text"))
    fig.add_trace(go.Scatter(x=[m / 1e6 for m in presets.values()], y=[0] * len(presets), mode="markers+text",
                             text=list(presets), textposition="top center", name="paper presets",
                             marker=dict(symbol="star", size=12, color="orange")))
    fig.add_vline(x=budget / 1e6, line_dash="dash", line_color="red", annotation_text="budget")
    fig.update_layout(xaxis_title="MADDs (millions)", yaxis_title="proxy top-1", title="condconv-nas: Pareto front")
    write_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
