"""benchmarks/proxy_fidelity.py's report: the trivial rankers' tau and the proxy's tau over pairs
of equal width, on tiny cases computed by hand."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "proxy_fidelity.py"
_spec = importlib.util.spec_from_file_location("proxy_fidelity", SCRIPT)
fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)


def test_trivial_rankers_tau_b():
    # reference 0.80 < 0.82 < 0.83 < 0.84 (specs a, b, d, c); 6 pairs.
    # width 0.5 0.5 1 1: (a,b) and (c,d) tied in width, the other 4 concordant:
    #   tau-b = 4 / sqrt((6 - 2) * (6 - 0)) = 4 / sqrt(24) = 0.8165 (tau-a would be 4/6).
    # madds 100 200 300 400: only (c,d) discordant (c above d in MADDs, below in the
    #   reference): (5 - 1) / 6 = 2/3; params reversed: -2/3.
    rows = [
        {"width": 0.5, "madds": 100, "params": 40, "reference": 0.80},
        {"width": 0.5, "madds": 200, "params": 30, "reference": 0.82},
        {"width": 1.0, "madds": 300, "params": 20, "reference": 0.84},
        {"width": 1.0, "madds": 400, "params": 10, "reference": 0.83},
    ]
    t = fidelity.taus(rows, ["width", "madds", "params"])
    assert t["width"] == pytest.approx(4 / math.sqrt(24))
    assert t["madds"] == pytest.approx(2 / 3)
    assert t["params"] == pytest.approx(-2 / 3)


def test_equal_width_pairs():
    # width 0.5: (a,b) proxy b > a, reference a > b: wrong.
    # width 1.0: (c,d) right; (c,e) tied in the proxy: neither; (d,e) proxy e > d, reference
    #   d > e: wrong. Pairs across widths (a,c), ... do not count.
    # right 1, wrong 2: tau (1 - 2) / 3 = -1/3 (-1/4 if the tied pair were counted).
    rows = [
        {"width": 0.5, "proxy": 0.70, "reference": 0.80},
        {"width": 0.5, "proxy": 0.72, "reference": 0.79},
        {"width": 1.0, "proxy": 0.85, "reference": 0.86},
        {"width": 1.0, "proxy": 0.80, "reference": 0.84},
        {"width": 1.0, "proxy": 0.85, "reference": 0.83},
    ]
    assert fidelity.within_width(rows, "proxy") == (1, 2)
    assert fidelity.pair_tau(1, 2) == pytest.approx(-1 / 3)
    assert math.isnan(fidelity.pair_tau(0, 0))
