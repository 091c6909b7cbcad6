"""config.json and the resume check come from `SearchConfig`'s fields: a setting added to the class
is written, and, marked same_run, compared when a run resumes; its help states the field's
default."""

import dataclasses
import json

import pytest

from condconv_nas.errors import UsageError
from condconv_nas.nas.options import SearchConfig, help_text, setting
from condconv_nas.nas.run_config import check_resume, run_config


@dataclasses.dataclass(frozen=True, kw_only=True)
class Extended(SearchConfig):
    """A release that added two settings."""

    knob: int = setting(3, "a setting a resumed run must keep", same_run=True)
    dial: int = setting(5, "a setting each worker may choose")


def written(tmp_path, options):
    config = run_config(options, budget=options.budget, recipe={"lr": 0.1})
    (tmp_path / "config.json").write_text(json.dumps(config))
    return config


def test_a_new_setting_is_written_and_compared_when_the_run_resumes(tmp_path):
    config = written(tmp_path, Extended(budget=10**9))
    assert config["knob"] == 3 and config["dial"] == 5 and config["recipe"] == {"lr": 0.1}
    assert set(config) >= {f.name for f in dataclasses.fields(Extended)}
    again = run_config(Extended(budget=10**9, dial=6), budget=10**9, recipe={"lr": 0.1})
    assert check_resume(tmp_path, again, Extended)["dial"] == 5  # not same_run: may differ
    changed = run_config(Extended(budget=10**9, knob=4), budget=10**9, recipe={"lr": 0.1})
    with pytest.raises(UsageError, match="different knob"):
        check_resume(tmp_path, changed, Extended)


def test_a_config_written_before_a_setting_existed_stands_for_its_default(tmp_path):
    config = written(tmp_path, SearchConfig(budget=10**9))  # the release before: no knob
    assert "knob" not in config
    now = run_config(Extended(budget=10**9), budget=10**9, recipe={"lr": 0.1})
    check_resume(tmp_path, now, Extended)
    with pytest.raises(UsageError, match="different knob"):
        check_resume(
            tmp_path, run_config(Extended(budget=10**9, knob=9), recipe={"lr": 0.1}), Extended
        )


def test_resolved_values_are_what_is_written_and_compared(tmp_path):
    """The budget as given ("1G") and as resolved (MADDs) are one run."""
    options = SearchConfig(budget="1G")
    config = written(tmp_path, options)
    assert config["budget"] == 10**9
    with pytest.raises(UsageError, match="different recipe"):
        check_resume(tmp_path, run_config(options, recipe={"lr": 0.2}), SearchConfig)


def test_help_says_each_default_from_its_field():
    fields = {f.name: f for f in dataclasses.fields(Extended)}
    assert help_text(fields["knob"]).endswith("(default: 3)")
    assert help_text(fields["latency_batch"]).endswith("(default: 1)")
    assert help_text(fields["cpus_per_trial"]).endswith("(default: 1)")  # 1.0, as the user types
    assert help_text(fields["trials"]).endswith("(default: the trainer's)")  # None, in words
    assert "default" not in help_text(fields["budget"])  # required
    assert "default" not in help_text(fields["init"])  # None: nothing to say
    for f in dataclasses.fields(SearchConfig):  # no help repeats a default by hand
        assert f.metadata["help"].count("default:") == 0, f.name


def test_a_setting_s_range_is_declared_beside_it_and_checked():
    from condconv_nas.nas.options import Range

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Ranged(SearchConfig):
        share: float = setting(0.5, "a fraction", within=Range(0, 1, low_open=True))

    assert Ranged(budget=10**9, share=1.0).share == 1.0
    for bad in (0, 1.5, float("nan"), "half", True):
        with pytest.raises(UsageError, match=r"--share must be in \(0, 1\]"):
            Ranged(budget=10**9, share=bad)
    with pytest.raises(UsageError, match=r"--latency-batch must be an integer in \[1, 4096\]"):
        SearchConfig(budget=10**9, latency_batch=4097)
