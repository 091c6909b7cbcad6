"""The spec: round trips, ids, and every kind of invalid spec refused (API and CLI)."""

import hashlib
import json
import subprocess
import sys

import pytest
from helpers import run_cli, run_here

from condconv_nas import load_spec
from condconv_nas.spec import PRESETS, ArchSpec, SpecError

B0 = load_spec("condconv-efficientnet-b0")


def test_round_trip_dict_and_file(tmp_path):
    for name in PRESETS:
        spec = load_spec(name)
        assert ArchSpec.from_dict(spec.to_dict()) == spec
        path = spec.save(tmp_path / f"{name}.json")
        assert load_spec(path) == spec and load_spec(str(path)).id == spec.id
    d = B0.to_dict()
    assert list(d)[0] == "schema_version" and d["condconv"]["routing"]["share"] == "block"
    assert d == {
        "schema_version": 1,
        "base": "efficientnet_b0",
        "width_multiplier": 1.0,
        "depth_multiplier": 1.0,
        "resolution": 224,
        "num_classes": 1000,
        "condconv": {
            "begin_layer": 10,
            "num_experts": 8,
            "classifier": False,
            "routing": {
                "share": "block",
                "hidden": "none",
                "activation": "sigmoid",
                "hierarchical": False,
            },
        },
    }


def test_id_is_hash_of_canonical_json_and_stable_across_processes():
    canonical = json.dumps(B0.to_dict(), sort_keys=True, separators=(",", ":"))
    assert B0.id == hashlib.sha256(canonical.encode()).hexdigest()[:12] == "a855c35684e2"
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from condconv_nas import load_spec;print(load_spec('condconv-efficientnet-b0').id)",
        ],
        capture_output=True,
        text=True,
    )
    assert other.stdout.strip() == B0.id
    # 1 and 1.0 are the same multiplier; key order does not matter
    d = B0.to_dict()
    d["width_multiplier"] = 1
    assert ArchSpec.from_dict(dict(reversed(list(d.items())))).id == B0.id
    assert len({load_spec(n).id for n in PRESETS}) == len(PRESETS)


def bad(**changes):
    d = B0.to_dict()
    for path, value in changes.items():
        node = d
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return d


INVALID = {  # case: (spec dict, field named in the message)
    "unknown field": ({**B0.to_dict(), "colour": "red"}, "colour"),
    "unknown nested field": (bad(condconv__experts=4), "condconv.experts"),
    "wrong type": (bad(resolution="224"), "resolution"),
    "bool for int": (bad(condconv__num_experts=True), "condconv.num_experts"),
    "begin past classifier": (bad(condconv__begin_layer=19), "condconv.begin_layer"),
    "experts < 1": (bad(condconv__num_experts=0), "condconv.num_experts"),
    "width <= 0": (bad(width_multiplier=0), "width_multiplier"),
    "depth <= 0": (bad(depth_multiplier=-1.0), "depth_multiplier"),
    "unknown base": (bad(base="vgg16"), "base"),
    "unknown share": (bad(condconv__routing__share="global"), "condconv.routing.share"),
    "unknown hidden": (bad(condconv__routing__hidden="huge"), "condconv.routing.hidden"),
    "unknown activation": (
        bad(condconv__routing__activation="relu"),
        "condconv.routing.activation",
    ),
    "schema version": (bad(schema_version=2), "schema_version"),
    "missing base": ({k: v for k, v in B0.to_dict().items() if k != "base"}, "base"),
    "skip not an int": (bad(skip_downsample=1.0), "skip_downsample"),
    "skip negative": (bad(skip_downsample=-1), "skip_downsample"),
    "skip past the base's steps": (bad(skip_downsample=6), "skip_downsample"),
    # 16 px with 4 halvings left: 1x1 would need 16 / 16; 8 px falls under it
    "skip leaves under 1x1": (bad(skip_downsample=1, resolution=8), "skip_downsample"),
    "skip does not divide": (bad(skip_downsample=2, resolution=36), "skip_downsample"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_spec_rejected_naming_the_field(case):
    d, field = INVALID[case]
    with pytest.raises(SpecError) as e:
        ArchSpec.from_dict(d)
    assert str(e.value).startswith(field + ":") or f"{field}:" in str(e.value)


@pytest.mark.parametrize(
    "case",
    [
        "unknown field",
        "wrong type",
        "begin past classifier",
        "experts < 1",
        "width <= 0",
        "unknown base",
        "unknown share",
        "skip past the base's steps",
        "skip leaves under 1x1",
    ],
)
def test_invalid_spec_through_cli_exit_2(case, tmp_path, refuse):
    d, field = INVALID[case]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    res = refuse("madds", path)
    assert res.returncode == 2
    assert field in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_malformed_json_and_missing_file_exit_2(tmp_path, refuse):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    res = refuse("madds", path)
    assert res.returncode == 2 and "not valid JSON" in res.stderr and "Traceback" not in res.stderr
    res = refuse("madds", tmp_path / "missing.json")
    assert res.returncode == 2 and "no such spec file" in res.stderr


def test_madds_cli_json():
    res = run_here("madds", "condconv-efficientnet-b0", "--format", "json")  # in this process
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["params"] == 24013284 and isinstance(out["madds"], int)
    assert abs(out["madds"] / 1e6 - 413) / 413 < 0.025
    # a fresh process, as a user runs it (imports nothing the test process had done for it)
    res = run_cli("madds", "mobilenet-v1", "--resolution", "112", "--format", "json")
    assert json.loads(res.stdout)["resolution"] == 112


def test_table1_cli():
    res = run_here("table1", "--format", "json")  # in this process
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    # the paper's Table 1 MADDs (M), baseline then CondConv, written here, not read from the code
    paper = [567, 600, 301, 329, 312, 325, 4093, 4213, 391, 413]
    assert [r["paper_madds_M"] for r in rows] == paper
    for r in rows:
        assert r["diff_pct"] == pytest.approx(
            100 * (r["madds_M"] - r["paper_madds_M"]) / r["paper_madds_M"], abs=0.025
        )  # madds_M is rounded to 0.1M, diff_pct computed before it
        assert abs(r["diff_pct"]) <= 2.5, r


def test_import_is_light():
    code = (
        "import sys, condconv_nas; "
        "print(sorted(m for m in ('ray','nni','optuna','torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    ).stdout.strip()
    assert out == "[]"


def test_skip_downsample_defaults_to_0_and_keeps_old_ids():
    old = {"schema_version": 1, "base": "efficientnet_b0", "resolution": 32}
    spec = ArchSpec.from_dict(old)
    assert spec.skip_downsample == 0 and "skip_downsample" not in spec.to_dict()
    assert spec.replace(skip_downsample=0).id == spec.id
    skipped = spec.replace(skip_downsample=2)
    assert skipped.to_dict()["skip_downsample"] == 2 and skipped.id != spec.id
    assert ArchSpec.from_dict(skipped.to_dict()) == skipped
    assert all(load_spec(n).skip_downsample == 0 for n in PRESETS)
    # every base halves five times: 32 px with k steps skipped ends on 2**k maps
    assert [spec.replace(skip_downsample=k).total_stride for k in range(6)] == [32, 16, 8, 4, 2, 1]
