"""Pictures of `analyze_routing`'s result (``routing.json``), drawn from the dict alone.

Each ``plot_*`` returns a matplotlib figure, made without pyplot so that the user's backend is
left alone: the class means per router as small heat maps on one colour scale, the class
specificity of every router in network order (the paper's early-versus-late story in one line),
and the distribution of the routing weights per router. `draw_routing` renders the three as PNG
bytes.
"""

from __future__ import annotations

import io

MAX_CLASS_TICKS = 30  # more classes than this: the class axis is labelled, its ticks are not
MIN_WIDTH = 6.4  # inches: a grid of one router still holds its two-line title


def _subplots(*grid, figsize, dpi=100, **kwargs):
    """A figure of its own (no pyplot): drawing never switches or touches the user's backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    return fig, fig.subplots(*grid, **kwargs)


def label(layer: dict) -> str:
    """A router's short name: the paper's layer numbers it feeds (L14, L14-15), then its place."""
    nums = layer.get("layers") or []
    where = "" if not nums else f"L{nums[0]}" if len(nums) == 1 else f"L{nums[0]}-{nums[-1]}"
    return f"{where} {layer['name']}".strip()


def _about(info: dict) -> str:
    split = f" ({info['split']} split)" if info.get("split") else ""
    return f"{info.get('data')}{split}, {info['num_examples']} examples"


def _grid(n: int, width: float, height: float):
    cols = min(n, 4 if n <= 12 else 6)
    rows = -(-n // cols)
    fig, axes = _subplots(
        rows, cols, figsize=(max(width * cols + 1.2, MIN_WIDTH), height * rows + 0.8), squeeze=False
    )
    flat = axes.ravel().tolist()
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def plot_class_means(info: dict):
    """One heat map per router: classes (rows, by name) x experts, the mean routing weight."""
    import numpy as np

    layers, classes = info["layers"], info["classes"]
    grids = [
        np.array([[np.nan if v is None else v for v in row] for row in lay["class_means"]])
        for lay in layers
    ]
    fig, axes = _grid(len(layers), 2.4, 0.6 + 0.16 * min(len(classes), 40))
    image = None
    for ax, lay, g in zip(axes, layers, grids, strict=True):
        # routing weights lie in [0, 1]: one scale for every router and every run
        image = ax.imshow(g, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_title(
            f"{label(lay)}\nspecificity {lay['class_specificity']:.2f}, "
            f"spread {lay['class_spread']:.3f}",
            fontsize=8,
        )
        ax.set_xlabel("expert", fontsize=7)
        ax.set_xticks(range(lay["num_experts"]))
        ax.tick_params(labelsize=6)
        ax.set_ylabel("class", fontsize=7)
        if len(classes) <= MAX_CLASS_TICKS:
            ax.set_yticks(range(len(classes)), classes)
        else:
            ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="mean routing weight")
    fig.suptitle(
        f"Mean routing weight per class and expert, routers in network order\n{_about(info)}",
        fontsize=10,
    )
    return fig


def plot_specificity(info: dict):
    """Class specificity of every router, in network order: do late layers route by class?"""
    layers = info["layers"]
    values = [lay["class_specificity"] for lay in layers]
    fig, ax = _subplots(figsize=(max(6.0, 0.45 * len(layers) + 2), 4.2))
    ax.plot(
        range(len(values)), values, marker="o", ms=6, c="tab:blue", label="class specificity (left)"
    )
    for i, v in enumerate(values):
        ax.annotate(
            f"{v:.2f}", (i, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7
        )
    ax.set_xticks(range(len(layers)), [label(lay) for lay in layers], rotation=45, ha="right")
    ax.tick_params(axis="x", labelsize=7)
    top = max(0.1, 1.15 * max(values))
    ax.set_ylim(-0.05 * top, top)  # a point at 0 shows whole, above the frame
    ax.set_xlabel("router, in network order (L = the paper's layer number it feeds)")
    ax.set_ylabel("class specificity\n(share of routing variance between classes)", c="tab:blue")
    # A router whose weights barely move can still be "specific" in tiny differences: the spread
    # in routing-weight units tells whether the class changes the kernel by much.
    spread = [lay["class_spread"] for lay in layers]
    right = ax.twinx()  # drawn after ax: its open squares frame the dots they fall on
    right.plot(
        range(len(spread)),
        spread,
        ls="--",
        marker="s",
        ms=10,
        mfc="none",
        c="0.45",
        label="class spread (right)",
    )
    top = max(0.02, 1.15 * max(spread))
    right.set_ylim(-0.05 * top, top)
    right.set_ylabel("class spread (RMS of class mean - mean)", c="0.35", fontsize=9)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    ax.set_title(f"Class specificity of routing across the network\n{_about(info)}", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def plot_distribution(info: dict):
    """Histogram of every router's weights (all experts and examples) over [0, 1]."""
    layers, edges = info["layers"], info["bins"]
    width = edges[1] - edges[0]
    fig, axes = _grid(len(layers), 2.4, 1.9)
    for ax, lay in zip(axes, layers, strict=True):
        total = sum(lay["histogram"]) or 1
        ax.bar(edges[:-1], [c / total for c in lay["histogram"]], width=width, align="edge")
        mean = sum(lay["mean"]) / len(lay["mean"])
        ax.axvline(mean, c="tab:red", lw=1)
        ax.set_title(f"{label(lay)}\nmean {mean:.2f} ({lay['activation']})", fontsize=8)
        ax.set_xlim(-0.03, 1.03)  # a mean at 0 or 1 stays clear of the frame
        ax.set_xlabel("routing weight", fontsize=7)
        ax.set_ylabel("share of weights", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(
        f"Distribution of routing weights per router (all experts; red: the mean)\n{_about(info)}",
        fontsize=10,
    )
    return fig


PICTURES = {
    "routing_class_means.png": plot_class_means,
    "routing_specificity.png": plot_specificity,
    "routing_distribution.png": plot_distribution,
}


def draw_routing(info: dict) -> dict[str, bytes]:
    """The three pictures as PNG bytes, by file name."""
    pictures = {}
    for name, plot in PICTURES.items():
        fig = plot(info)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        pictures[name] = buf.getvalue()
    return pictures
