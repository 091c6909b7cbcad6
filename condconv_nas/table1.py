"""The paper's Table 1 (MADDs in millions), side by side with ours."""

from __future__ import annotations

# family, baseline preset, CondConv preset, paper baseline MADDs (M), paper CondConv MADDs (M),
# paper top-1s
PAPER_TABLE1 = [
    ("MobileNetV1 (1.0x)", "mobilenet-v1", "condconv-mobilenet-v1", 567, 600, 71.9, 73.7),
    ("MobileNetV2 (1.0x)", "mobilenet-v2", "condconv-mobilenet-v2", 301, 329, 71.6, 74.6),
    ("MnasNet-A1", "mnasnet-a1", "condconv-mnasnet-a1", 312, 325, 74.9, 76.2),
    ("ResNet-50", "resnet50", "condconv-resnet50", 4093, 4213, 77.7, 78.6),
    ("EfficientNet-B0", "efficientnet-b0", "condconv-efficientnet-b0", 391, 413, 77.2, 78.3),
]


def table1() -> list[dict]:
    """One row per (family, baseline|condconv): paper MADDs, ours, the difference in %, our
    params."""
    from .madds import count_madds, count_params
    from .models import build_model

    rows = []
    for family, base, cond, paper_base, paper_cond, top1_base, top1_cond in PAPER_TABLE1:
        for preset, paper, top1 in ((base, paper_base, top1_base), (cond, paper_cond, top1_cond)):
            model = build_model(preset)
            madds = count_madds(model)
            rows.append(
                {
                    "model": family,
                    "preset": preset,
                    "paper_madds_M": paper,
                    "madds_M": round(madds / 1e6, 1),
                    "diff_pct": round(100 * (madds / 1e6 - paper) / paper, 2),
                    "params_M": round(count_params(model) / 1e6, 2),
                    "paper_top1": top1,
                }
            )
    return rows
