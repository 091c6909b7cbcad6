"""benchmarks/figure2.py's comparison of CondConv rows against static ones, on a case computed
by hand."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "figure2.py"
_spec = importlib.util.spec_from_file_location("figure2", SCRIPT)
figure2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figure2)


def row(width, experts, by_seed, skip=2):
    seeds = list(by_seed.values())
    return {"width": width, "experts": experts, "skip": skip, "seeds": seeds,
            "top1": sum(seeds) / len(seeds), "by_seed": by_seed}  # fmt: skip


def test_gain_in_standard_errors_and_paired_t():
    # static 0.90, 0.91, 0.92: mean 0.91, sd 0.01, s.e. 0.01 / sqrt(3)
    # CondConv 0.92, 0.92, 0.95 (seeds 0, 1, 2): mean 0.93, sd sqrt(0.0003) = 0.01732
    #   gain 0.02; s.e. of the difference sqrt(0.0001 / 3 + 0.0003 / 3) = 0.011547: 1.73 s.e.
    #   paired gains +0.02 +0.01 +0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 3.46
    # the control (width 0.28) has seeds 0 and 3 only: one pair (0.92 - 0.92 = 0), no t
    static = row(0.25, 1, {"0": 0.90, "1": 0.91, "2": 0.92})
    cc = row(0.25, 8, {"0": 0.92, "1": 0.92, "2": 0.95})
    other_skip = row(0.25, 1, {"0": 0.5, "1": 0.5}, skip=0)
    control = row(0.28, 1, {"0": 0.92, "3": 0.93})
    out = figure2.gains([static, cc, other_skip], [control])
    assert [(g["condconv"], g["static"]) for g in out] == [
        ("0.25 x8 (3 seeds)", "0.25 (3 seeds)"),
        ("0.25 x8 (3 seeds)", "0.28 (2 seeds)"),
    ]
    mine, eq = out
    assert mine["gain"] == pytest.approx(0.02)
    assert mine["s.e."] == pytest.approx(math.sqrt(0.0004 / 3), abs=1e-4)
    assert mine["gain / s.e."] == pytest.approx(1.7)
    assert mine["paired gains"] == "+0.0200 +0.0100 +0.0300"
    assert mine["paired t"] == pytest.approx(3.5) and mine["df"] == 2
    assert figure2.gains([row(0.25, 8, {"0": 0.9})], [row(0.25, 1, {"0": 0.8})])[0]["static"] == (
        "0.25 (1 seed)"
    )
    assert eq["gain"] == pytest.approx(0.005)  # 0.93 - 0.925
    assert eq["paired gains"] == "+0.0000" and eq["paired t"] is None and eq["df"] == 0
