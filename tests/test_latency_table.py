"""How the latency table turns a network's parts into a whole, against hand arithmetic."""

from condconv_nas.latency.table import LatencyTable


def table(tmp_path, samples):
    t = LatencyTable({"k": 1}, tmp_path / "t.json")
    t.calibration = {"mobilenet_v1": samples}
    return t


def test_a_positive_overhead_is_added(tmp_path):
    t = table(tmp_path, [[10.0, 12.0], [20.0, 21.0], [30.0, 34.0]])  # overheads 2, 1, 4
    assert t.whole_ms("mobilenet_v1", 5.0) == 5.0 + 2.0


def test_a_negative_overhead_scales_instead_and_never_goes_negative(tmp_path):
    # parts timed in place sum to more than the wholes: overheads -20, -10, -40
    t = table(tmp_path, [[100.0, 80.0], [50.0, 40.0], [200.0, 160.0]])
    # the additive rule would give 5 - 20 = -15 ms for a small network; the ratio gives 0.8 x 5
    assert t.whole_ms("mobilenet_v1", 5.0) == 4.0
