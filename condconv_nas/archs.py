"""The five base architectures as data (no torch import): timm arch strings and stage depths.

The block strings are timm's (``timm/models/efficientnet.py``: ``_gen_mobilenet_v1``,
``_gen_mobilenet_v2``, ``_gen_mnasnet_a1``, ``_gen_efficientnet``); timm's ``decode_arch_def``
and ``EfficientNet`` build them (see ``models/families.py``). Tests check that each builds
exactly timm's own model at multiplier 1.0.
"""

from __future__ import annotations

import math
import re

# base -> (one list of timm block strings per stage, activation, head 1x1 conv features rule) head:
# "scaled" = round_channels(1280 * width); "min" = max(1280, scaled); "fixed" = 1280; "none" = no
# head conv
EFFICIENTNET_ARCHS: dict[str, dict] = {
    "mobilenet_v1": dict(
        act="relu6",
        head="none",
        stages=[
            ["dsa_r1_k3_s1_c64"],
            ["dsa_r2_k3_s2_c128"],
            ["dsa_r2_k3_s2_c256"],
            ["dsa_r6_k3_s2_c512"],
            ["dsa_r2_k3_s2_c1024"],
        ],
    ),
    "mobilenet_v2": dict(
        act="relu6",
        head="min",
        stages=[
            ["ds_r1_k3_s1_c16"],
            ["ir_r2_k3_s2_e6_c24"],
            ["ir_r3_k3_s2_e6_c32"],
            ["ir_r4_k3_s2_e6_c64"],
            ["ir_r3_k3_s1_e6_c96"],
            ["ir_r3_k3_s2_e6_c160"],
            ["ir_r1_k3_s1_e6_c320"],
        ],
    ),
    "mnasnet_a1": dict(
        act="relu",
        head="fixed",
        stages=[
            ["ds_r1_k3_s1_e1_c16_noskip"],
            ["ir_r2_k3_s2_e6_c24"],
            ["ir_r3_k5_s2_e3_c40_se0.25"],
            ["ir_r4_k3_s2_e6_c80"],
            ["ir_r2_k3_s1_e6_c112_se0.25"],
            ["ir_r3_k5_s2_e6_c160_se0.25"],
            ["ir_r1_k3_s1_e6_c320"],
        ],
    ),
    "efficientnet_b0": dict(
        act="swish",
        head="scaled",
        stages=[
            ["ds_r1_k3_s1_e1_c16_se0.25"],
            ["ir_r2_k3_s2_e6_c24_se0.25"],
            ["ir_r2_k5_s2_e6_c40_se0.25"],
            ["ir_r3_k3_s2_e6_c80_se0.25"],
            ["ir_r3_k5_s1_e6_c112_se0.25"],
            ["ir_r4_k5_s2_e6_c192_se0.25"],
            ["ir_r1_k3_s1_e6_c320_se0.25"],
        ],
    ),
}
# ResNet: bottleneck repeats per stage (timm's ResNet with Bottleneck blocks).
RESNET_ARCHS: dict[str, tuple] = {"resnet50": (3, 4, 6, 3)}

BASES = tuple(EFFICIENTNET_ARCHS) + tuple(RESNET_ARCHS)


def stage_depths(base: str, depth_multiplier: float = 1.0) -> list[int]:
    """Blocks per stage after depth scaling (ceil, as timm's ``decode_arch_def`` does per stage)."""
    if base in RESNET_ARCHS:
        repeats = list(RESNET_ARCHS[base])
    else:
        repeats = [
            sum(int(re.search(r"_r(\d+)", b).group(1)) for b in stage)
            for stage in EFFICIENTNET_ARCHS[base]["stages"]
        ]
    return [int(math.ceil(r * depth_multiplier)) for r in repeats]


def num_blocks(base: str, depth_multiplier: float = 1.0) -> int:
    """B in docs/method.md's numbering: layer 1 = stem, 2..B+1 = blocks, B+2 = classifier."""
    return sum(stage_depths(base, depth_multiplier))


def stride_steps(base: str) -> int:
    """How many times the base halves its feature maps, counted from the stem: the stem and every
    stage that starts at stride 2 (ResNet: its stem, its max pool and three stages). Tests check
    this against the built network's stride-2 layers."""
    if base in RESNET_ARCHS:
        return 5
    return 1 + sum("_s2_" in stage[0] for stage in EFFICIENTNET_ARCHS[base]["stages"])
