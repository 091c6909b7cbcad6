"""Every command's inputs, fuzzed: numbers far beyond any range, odd strings, and pathological
spec, space, recipe and run files each end in exit status 2 with one line on stderr naming the
problem, no traceback, and nothing written (tests/test_bad_input.py holds the named cases).

Every generated input is invalid by construction (out of range, the wrong type, malformed), so
no example ever starts a search, a training or a measurement. Derandomized: the same examples
on every run.
"""

import importlib.util
import json
import warnings

import pytest
import torch
import yaml
from helpers import run_here
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written into the repository either
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PATHOLOGICAL = settings(FUZZ, max_examples=25)  # files of many kinds: more examples

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))


@pytest.fixture(scope="module")
def here(tmp_path_factory):
    """The working folder every example runs in; whatever an example writes stays visible."""
    return tmp_path_factory.mktemp("fuzz")


def _tree(root):
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


def refused(folder, argv, word=None):
    """Run the CLI in ``folder``: exit 2, one line on stderr (naming ``word``), nothing written."""
    before = _tree(folder)
    # OMP_NUM_THREADS: the default --threads, without a look at the cores
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_here(*argv, cwd=folder, env={"OMP_NUM_THREADS": torch.get_num_threads()})
    code, text, out = res.returncode, res.stderr, res.stdout
    shown = [a if len(str(a)) < 200 else f"{str(a)[:100]}...({len(str(a))} chars)" for a in argv]
    assert code == 2, (shown, code, text[-3000:])
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("condconv-nas"), (shown, text[-3000:])
    if word is not None:
        assert word in lines[0], (shown, lines[0][:500])
    assert "Traceback" not in text and out == ""
    assert not [str(w.message) for w in caught if w.category is not FutureWarning]
    assert _tree(folder) == before, ("something was written", shown)
    return lines[0]


# -- numbers on the command line ---------------------------------------------------------------

SEARCH = ["search", "--budget", "400M", "--trials", "1", "--quiet"]
TRAIN = ["train", "mobilenet-v1", "--out", "out"]


def _newest_opset():
    import onnx

    return onnx.defs.onnx_opset_version()


INT_OPTIONS = [  # (the command, the option, its lowest and highest value)
    (SEARCH, "--trials", 1, 10**6),
    (SEARCH, "--seed", 0, 2**32 - 1),
    (SEARCH, "--latency-batch", 1, 4096),
    (SEARCH, "--threads", 1, 1024),
    (TRAIN, "--epochs", 1, 100_000),
    (TRAIN, "--batch-size", 1, 2**20),
    (TRAIN, "--workers", 0, 1024),
    (TRAIN, "--seed", 0, 2**32 - 1),
    (TRAIN, "--threads", 1, 1024),
    (["evaluate", "model.pt"], "--batch-size", 1, 2**20),
    (["evaluate", "model.pt"], "--threads", 1, 1024),
    (["analyze", "model.pt"], "--batch-size", 1, 2**20),
    (["latency", "mobilenet-v1"], "--batch", 1, 4096),
    (["latency", "mobilenet-v1"], "--threads", 1, 1024),
    (["madds", "mobilenet-v1"], "--resolution", 8, 4096),
    (["export", "mobilenet-v1"], "--resolution", 8, 4096),
] + ([(["export", "mobilenet-v1"], "--opset", 18, _newest_opset())] if HAS_ONNX else [])


def huge():
    """Integers of 20 to 4000 digits, either sign (int() reads up to 4300)."""
    return st.builds(lambda k, sign: sign * 10**k, st.integers(20, 4000), st.sampled_from([1, -1]))


def int_outside(low, high):
    """Integers below ``low`` or above ``high``, small and huge."""
    return st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        huge().filter(lambda v: not low <= v <= high),
    )


def not_an_int():
    """Text no int() reads: floats, words, empty."""
    return st.one_of(
        st.floats().map(repr),  # '1.5', 'inf', 'nan', '1e+300'
        st.sampled_from(["", " ", "ten", "1_", "0x10", "1/2", "--", "1,000", "+-1"]),
    )


@pytest.mark.parametrize(
    "argv,option,low,high", INT_OPTIONS, ids=[f"{a[0]} {o}" for a, o, *_ in INT_OPTIONS]
)
@FUZZ
@given(data=st.data())
def test_integer_options_out_of_range(here, argv, option, low, high, data):
    value = data.draw(st.one_of(int_outside(low, high).map(str), not_an_int()), label="value")
    refused(here, [*argv, f"{option}={value}"], option.lstrip("-"))


def float_outside(low, high, *, low_open):
    """Floats (as text) outside [low, high] (``(low, high]`` when ``low_open``), NaN and
    infinities included, and numbers beyond a float's range."""
    inside = (lambda x: low < x <= high) if low_open else (lambda x: low <= x <= high)
    return st.one_of(
        st.floats().filter(lambda x: not inside(x)).map(repr),
        st.builds(lambda k: f"{k}e400", st.integers(1, 9)),
        st.sampled_from(["nan", "-inf", "1e-400" if low_open else "-1e-300", "", "one"]),
    )


@pytest.mark.parametrize(
    "option,low_open",
    [
        ("--cpus-per-trial", True),
        ("--gpus-per-trial", False),
        ("--cpus-per-worker", True),
        ("--gpus-per-worker", False),
    ],
)
@FUZZ
@given(data=st.data())
def test_ray_resources_out_of_range(here, option, low_open, data):
    value = data.draw(float_outside(0, 1024, low_open=low_open), label="value")
    refused(here, [*SEARCH, "--backend", "ray", f"{option}={value}"], option)


@FUZZ
@given(
    value=st.one_of(
        st.integers(max_value=0).map(str),
        st.integers(min_value=1025).map(str),
        st.floats(allow_nan=True).map(repr),
        st.text(alphabet="abc -_.", min_size=0, max_size=5),
    )
)
def test_workers_per_trial_out_of_range(here, value):
    refused(
        here, [*SEARCH, "--backend", "ray", f"--workers-per-trial={value}"], "workers-per-trial"
    )


NO_DIGIT = st.characters(blacklist_categories=("Nd", "Cs"), blacklist_characters="\x00")


def bad_budget():
    """MADD budgets beyond 10**18, at or below zero, or no number at all."""
    suffix = st.sampled_from(["", "K", "k", "M", "G", "g"])
    scale = {"": 0, "K": 3, "k": 3, "M": 6, "G": 9, "g": 9}
    return st.one_of(
        st.builds(
            lambda s, k, extra: f"{10 ** (18 - scale[s] + k) + extra}{s}",
            suffix,
            st.integers(0, 300),
            st.integers(1, 10**6),
        ),
        st.builds(lambda k, s: "9" * k + s, st.integers(310, 3000), suffix),  # inf as a float
        st.sampled_from(["0", "0.0", "0.4", "0.0000001K", ".4", "-5M", "1e9", "4T", "", "0G"]),
        st.text(NO_DIGIT, max_size=30),
    )


def bad_latency():
    """Latency budgets beyond an hour, at or below zero, or no time at all."""
    return st.one_of(
        st.integers(3_600_001).map(lambda v: f"{v}ms"),
        st.integers(3_601).map(lambda v: f"{v}s"),
        st.builds(lambda k: "9" * k, st.integers(400, 3000)),
        st.sampled_from(["0", "0ms", "0.0s", "-5", "1e3", "20us", "", "inf", "nan"]),
        st.text(NO_DIGIT, max_size=30),
    )


@FUZZ
@given(value=bad_budget())
def test_budget_out_of_range(here, value):
    refused(here, ["search", "--quiet", f"--budget={value}"], "budget")


@FUZZ
@given(value=bad_latency())
def test_latency_budget_out_of_range(here, value):
    refused(here, [*SEARCH, f"--latency-budget={value}"], "latency budget")


# -- names: long, odd ------------------------------------------------------------------------

NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def too_long_name():
    """A path with a component longer than any file system takes (255 bytes)."""
    return st.builds(
        lambda head, long, tail: f"{head}{long}{tail}",
        st.sampled_from(["", "./", "x/", "/tmp/", "imagefolder-"]),
        st.text(
            st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
            min_size=256,
            max_size=2000,
        ),
        st.text(NAME_CHARS, max_size=20),
    )


NAME_OPTIONS = [  # (the command before the name, the command after it)
    (["madds"], []),
    (["latency"], []),
    (["latency", "--space"], []),
    (["show"], []),
    (["show", "--best"], []),
    (["evaluate"], []),
    (["analyze"], []),
    (["analyze", "model.pt", "--out"], []),
    (["export"], []),
    (["train"], ["--out", "out"]),
    (TRAIN + ["--out"], []),
    (TRAIN + ["--trainer"], []),
    (TRAIN + ["--init"], []),
    ([*SEARCH, "--space"], []),
    ([*SEARCH, "--trainer"], []),
    ([*SEARCH, "--results"], []),
    ([*SEARCH, "--init"], []),
    ([*SEARCH, "--latency-budget", "20ms", "--latency-device"], []),
] + ([(["export", "mobilenet-v1", "--out"], [])] if HAS_ONNX else [])


@pytest.mark.parametrize(
    "before,after", NAME_OPTIONS, ids=[" ".join(b[-2:]) for b, _ in NAME_OPTIONS]
)
@settings(FUZZ, max_examples=4)
@given(name=too_long_name())
def test_names_too_long(here, before, after, name):
    refused(here, [*before, name, *after])


@FUZZ
@given(
    prefix=st.sampled_from(["imagefolder:", "cifar10:", "cifar100:", "mnist:", "fashion-mnist:"]),
    name=too_long_name(),
    command=st.sampled_from([SEARCH, TRAIN, ["evaluate", "model.pt"], ["analyze", "model.pt"]]),
)
def test_data_paths_too_long(here, prefix, name, command):
    refused(here, [*command, "--data", prefix + name])


def bad_run_name():
    """Run names with a character outside [A-Za-z0-9._-], a leading '.', '_' or '-', or too
    long."""
    alnum = st.sampled_from("abcXYZ019")
    return st.one_of(
        st.builds(
            lambda a, bad, b: a + bad + b,
            st.text(alnum, max_size=10),
            st.text(
                NAME_CHARS.filter(lambda c: not (c.isascii() and (c.isalnum() or c in "._-"))),
                min_size=1,
                max_size=5,
            ),
            st.text(alnum, max_size=10),
        ),
        st.builds(lambda c, s: c + s, st.sampled_from("._-"), st.text(alnum, max_size=10)),
        st.text(alnum, min_size=129, max_size=1000),
        st.just(""),
    )


@FUZZ
@given(run=bad_run_name())
def test_run_names(here, run):
    refused(here, [*SEARCH, f"--run={run}"], "--run")


# -- fields of spec, space and recipe files --------------------------------------------------


def wrong_type(*, allow_none=False):
    """Values of no number type: text, bools, lists, mappings (and None unless allowed)."""
    return st.one_of(
        st.text(max_size=20),
        st.text(min_size=1000, max_size=5000),
        st.booleans(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        *([] if allow_none else [st.none()]),
    )


def bad_int(low, high, *, allow_none=False):
    """What an integer field in [low, high] refuses: integers outside, floats, other types."""
    return st.one_of(
        int_outside(low, high),
        st.floats(),  # a strict integer field takes no float, not even 8.0
        wrong_type(allow_none=allow_none),
    )


def bad_float(low, high, *, low_open=False, high_open=False, allow_none=False):
    """What a float field refuses: numbers outside the range, NaN, infinities, other types."""

    def inside(x):
        return (low < x if low_open else low <= x) and (x < high if high_open else x <= high)

    return st.one_of(
        st.floats().filter(lambda x: not inside(x)),
        huge(),  # ints beyond a float's range
        st.integers().filter(lambda v: not inside(v)),
        wrong_type(allow_none=allow_none),
    )


SPEC = {
    "base": "mobilenet_v1",
    "condconv": {"begin_layer": 7, "num_experts": 8, "classifier": True},
}
SPEC_FIELDS = {  # field path: what it refuses
    ("width_multiplier",): bad_float(0, 8, low_open=True),
    ("depth_multiplier",): bad_float(0, 8, low_open=True),
    ("resolution",): bad_int(8, 4096),
    ("num_classes",): bad_int(1, 1_000_000),
    ("bn_eps",): bad_float(0, 1, low_open=True, high_open=True),
    ("condconv", "begin_layer"): bad_int(1, 15),  # 15 blocks + 2 for mobilenet_v1
    ("condconv", "num_experts"): bad_int(1, 1024),
    ("schema_version",): bad_int(1, 1),
}


def _with(d, path, value):
    d = json.loads(json.dumps(d))
    inner = d
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return d


SPEC_COMMANDS = [["madds"], ["latency"], ["train"]] + ([["export"]] if HAS_ONNX else [])


@pytest.mark.parametrize("path", list(SPEC_FIELDS), ids=".".join)
@FUZZ
@given(data=st.data())
def test_spec_fields_out_of_range(here, path, data):
    value = data.draw(SPEC_FIELDS[path], label="value")
    command = data.draw(st.sampled_from(SPEC_COMMANDS), label="command")
    (here / "spec.json").write_text(json.dumps(_with(SPEC, path, value)))
    after = ["--out", "out"] if command == ["train"] else []
    refused(here, [*command, "spec.json", *after], path[-1])


SPACE_FIELDS = {
    "resolution": bad_int(8, 4096),
    "num_classes": bad_int(1, 1_000_000),
    "width_multiplier": bad_float(0, 8, low_open=True),
    "depth_multiplier": bad_float(0, 8, low_open=True),
    "begin_stage": st.one_of(int_outside(1, 13), st.floats(), st.text(max_size=5)).filter(
        lambda v: v != "none"
    ),
    "begin_offset": bad_int(0, 10_000),
    "num_experts": bad_int(1, 1024),
}


def _yaml(data):
    return yaml.safe_dump(data, allow_unicode=True)


@pytest.mark.parametrize("field", list(SPACE_FIELDS))
@FUZZ
@given(data=st.data())
def test_space_fields_out_of_range(here, field, data):
    value = data.draw(SPACE_FIELDS[field], label="value")
    space = {"base": "mobilenet_v1", "decisions": {"width_multiplier": [0.5, 1.0]}}
    if field in ("resolution", "num_classes"):
        space[field] = value
    else:  # a decision: the bad choice among good ones, or a list too short or too long
        good = {"width_multiplier": 1.0, "depth_multiplier": 1.0, "begin_stage": 4}.get(field, 2)
        space["decisions"][field] = data.draw(
            st.sampled_from([[value], [good, value], [], [good] * 101]), label="choices"
        )
    (here / "space.yaml").write_text(_yaml(space))
    command = data.draw(st.sampled_from([SEARCH, ["latency"]]), label="command")
    refused(here, [*command, "--space", "space.yaml"], field)


RECIPE_FIELDS = {
    "epochs": bad_int(1, 100_000),
    "batch_size": bad_int(1, 2**20),
    "resolution": bad_int(8, 4096, allow_none=True),
    "lr": bad_float(0, 100),
    "momentum": bad_float(0, 1),
    "weight_decay": bad_float(0, 1),
    "warmup_epochs": bad_int(0, 100_000),
    "decay_epochs": bad_float(0, 100_000, low_open=True),
    "decay_rate": bad_float(0, 1, low_open=True),
    "label_smoothing": bad_float(0, 1, high_open=True),
    "dropout": bad_float(0, 1, high_open=True),
    "drop_path": bad_float(0, 1, high_open=True),
    "mixup_alpha": bad_float(0, 100),
    "expert_dropout": bad_float(0, 1, high_open=True),
    "bn_momentum": bad_float(0, 1, allow_none=True),
    "ema_decay": bad_float(0, 1, high_open=True),
    "bn_recalibrate": bad_int(0, 1_000_000),
    "train_subset": bad_float(0, 1, low_open=True),
    "holdout": bad_float(0, 0.9, low_open=True),
    "seed": bad_int(0, 2**32 - 1),
    "workers": bad_int(0, 1024),
    "repeats": bad_int(1, 100),
    "dense_epochs": bad_int(0, 100_000),
    "trials": bad_int(1, 1_000_000),
}


@pytest.mark.parametrize("field", list(RECIPE_FIELDS))
@settings(FUZZ, max_examples=6)
@given(data=st.data())
def test_recipe_fields_out_of_range(here, field, data):
    value = data.draw(RECIPE_FIELDS[field], label="value")
    where = data.draw(st.sampled_from(["top", "overrides", "data_overrides"]), label="where")
    recipe = {
        "top": {field: value},
        "overrides": {"overrides": {"mobilenet_v1": {field: value}}},
        "data_overrides": {"data_overrides": {"digits": {field: value}}},
    }[where]
    (here / "recipe.yaml").write_text(_yaml(recipe))
    command = data.draw(st.sampled_from([SEARCH, TRAIN]), label="command")
    refused(here, [*command, "--trainer", "recipe.yaml"], field)


# -- pathological files --------------------------------------------------------------------------


def deep_json():
    """JSON lists or objects within each other, up to 100000 deep."""
    return st.builds(
        lambda n, kind: ("[" * n + "]" * n) if kind else ('{"a":' * n + "1" + "}" * n),
        st.integers(1000, 100_000),
        st.booleans(),
    )


def deep_yaml():
    """YAML flow lists or block sequences within each other, up to 20000 deep."""
    return st.builds(
        lambda n, kind, key: (
            (key + " " if key else "") + ("[" * n + "]" * n if kind else "- " * n + "1")
        ),
        st.integers(300, 20_000),
        st.booleans(),
        st.sampled_from(["", "base:", "decisions:", "epochs:"]),
    )


def laughs(key):
    """YAML aliases of aliases ("billion laughs"): 10**depth items, a few hundred bytes."""

    def text(depth, where):
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        for i in range(1, depth + 1):
            lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
        top = f"*a{depth}"
        lines.append({"top": f"{key}: {top}", "nested": f"{key}: {{x: {top}}}"}[where])
        return "\n".join(lines) + "\n"

    return st.builds(text, st.integers(1, 9), st.sampled_from(["top", "nested"]))


SCALARS = ["1", "1e400", "NaN", "-Infinity", "true", '"text"', "[1, 2]", "[[[]]]", "[{}]", "{"]


def long_number():
    return st.builds(lambda k: "9" * k, st.integers(4301, 20_000))


def json_text():
    return st.one_of(
        deep_json(),
        st.sampled_from(["", " ", "null", *SCALARS]),
        long_number(),
        long_number().map(lambda n: '{"base": "mobilenet_v1", "num_classes": ' + n + "}"),
        st.binary(min_size=1, max_size=50).map(lambda b: b"\xff" + b),
    )


def yaml_text(key, *, none_is_valid=False):
    """Malformed YAML of many kinds; ``none_is_valid``: an empty file is a valid one (a recipe's
    defaults), so none is made."""
    empties = [] if none_is_valid else ["", "null", "~", "---\n...\n"]
    return st.one_of(
        deep_yaml(),
        laughs(key),
        st.sampled_from([*empties, *SCALARS, "- 1\n- 2", "a: [1, 2", ": :", "!!binary x"]),
        long_number().map(lambda n: f"{key}: {n}\n"),
        st.sampled_from(["2020-99-99", "!!timestamp 2020-13-01", "!!int abc", "!!float x"]).map(
            lambda v: f"{key}: {v}\n"
        ),
        st.binary(min_size=1, max_size=50).map(lambda b: b"\xff" + b),
    )


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@PATHOLOGICAL
@given(content=json_text(), command=st.sampled_from(SPEC_COMMANDS))
def test_pathological_spec_files(here, content, command):
    _write(here / "spec.json", content)
    after = ["--out", "out"] if command == ["train"] else []
    refused(here, [*command, "spec.json", *after], "spec.json")


@PATHOLOGICAL
@given(content=yaml_text("base"), command=st.sampled_from([SEARCH, ["latency"]]))
def test_pathological_space_files(here, content, command):
    _write(here / "space.yaml", content)
    refused(here, [*command, "--space", "space.yaml"], "space.yaml")


@PATHOLOGICAL
@given(content=yaml_text("epochs", none_is_valid=True), command=st.sampled_from([SEARCH, TRAIN]))
def test_pathological_recipe_files(here, content, command):
    _write(here / "recipe.yaml", content)
    refused(here, [*command, "--trainer", "recipe.yaml"], "recipe.yaml")


def bad_front_point():
    """A pareto.json point with one field out of range."""
    good = {"trial": 1, "madds": 1, "params": 1, "top1": 0.5, "spec": {"base": "mobilenet_v1"}}
    fields = st.sampled_from(["trial", "madds", "params", "top1", "latency_ms", "spec"])

    def bad(field):
        return {
            "trial": bad_int(0, 10**18),
            "madds": bad_int(0, 10**18),
            "params": bad_int(0, 10**18),
            "top1": bad_float(0, 1),
            "latency_ms": bad_float(0, float("inf"), low_open=True, allow_none=True),
            "spec": st.one_of(
                wrong_type().filter(lambda v: not isinstance(v, dict)),
                st.builds(
                    lambda n: {"base": "mobilenet_v1", "num_classes": n}, int_outside(1, 10**6)
                ),
            ),
        }[field]

    return fields.flatmap(lambda f: bad(f).map(lambda v: [{**good, f: v}]))


@PATHOLOGICAL
@given(
    content=st.one_of(json_text(), bad_front_point().map(json.dumps)),
    command=st.sampled_from([["show"], ["show", "--best"], ["train"]]),
)
def test_pathological_run_folders(here, content, command):
    _write(here / "run" / "pareto.json", content)
    after = ["--out", "out"] if command == ["train"] else []
    refused(here, [*command, "run", *after], "pareto.json")


@PATHOLOGICAL
@given(content=json_text())
def test_pathological_run_configs(here, content):
    _write(here / "results" / "run" / "config.json", content)
    # a JSON object (one just shallow enough to read) is another run's: refused too
    refused(here, [*SEARCH, "--results", "results", "--run", "run"], "results/run")


@PATHOLOGICAL
@given(content=json_text())
def test_pathological_latency_tables(here, content):
    _write(here / "table.json", content)
    refused(
        here, [*SEARCH, "--latency-budget", "20ms", "--latency-device", "table.json"], "table.json"
    )
