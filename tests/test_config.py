from dataclasses import dataclass, field

import pytest

from lensperf.config import apply_overrides, from_dict, load_config, require, to_dict
from lensperf.errors import ConfigError
from lensperf.simulate.config import SimulationConfig

from .conftest import CONFIGS, run_cli


@dataclass(frozen=True, kw_only=True)
class Inner:
    rate: float = 0.5
    name: str = "x"

    def __post_init__(self):
        require(0 < self.rate <= 1, "rate", "must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class Outer:
    steps: int = 10
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_nested_values():
    cfg = from_dict(Outer, {"steps": 3, "inner": {"rate": 1}, "sizes": [4, 5, 6]})
    assert cfg == Outer(steps=3, inner=Inner(rate=1.0), sizes=(4, 5, 6))
    assert isinstance(cfg.inner.rate, float)


@pytest.mark.parametrize(
    "data, key, fragment",
    [
        ({"stepz": 1}, "stepz", "unknown key"),
        ({"inner": {"rat": 1}}, "inner.rat", "unknown key"),
        ({"steps": "ten"}, "steps", "expected an integer"),
        ({"steps": 2.5}, "steps", "expected an integer"),
        ({"steps": True}, "steps", "expected an integer"),
        ({"flag": "yes"}, "flag", "true or false"),
        ({"inner": {"rate": "fast"}}, "inner.rate", "expected a number"),
        ({"inner": {"rate": 2.0}}, "inner.rate", "must be in (0, 1]"),
        ({"inner": 3}, "inner", "expected a mapping"),
        ({"sizes": [1, "a"]}, "sizes[1]", "expected an integer"),
    ],
)
def test_bad_values_name_the_key(data, key, fragment):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert info.value.key == key
    assert fragment in info.value.reason
    assert key in str(info.value)


def test_numeric_strings_become_floats():
    # PyYAML reads 1e12 (no dot) as a string; configs write masses that way.
    assert from_dict(Inner, {"rate": "1e-1"}).rate == pytest.approx(0.1)


def test_overrides_apply_dotted_keys_and_parse_values():
    raw = {"steps": 1, "inner": {"rate": 0.5}}
    got = apply_overrides(raw, ["steps=7", "inner.rate=0.25", "inner.name=abc", "flag=true"])
    assert got == {"steps": 7, "flag": True, "inner": {"rate": 0.25, "name": "abc"}}
    assert raw == {"steps": 1, "inner": {"rate": 0.5}}  # not modified in place


@pytest.mark.parametrize("word", ["on", "off", "auto"])
def test_kernels_on_off_survive_yaml_booleans(word):
    # YAML 1.1 reads a bare `off` as False; the README's runtime.kernels=on|off must still work
    from lensperf.train.config import PretrainConfig

    config = load_config(
        PretrainConfig, CONFIGS / "pretrain" / "demo.yaml", [f"runtime.kernels={word}"]
    )
    assert config.runtime.kernels == word


@pytest.mark.parametrize("override", ["steps", "=3", "a..b=1"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, [override])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="steps: is a value"):
        apply_overrides({"steps": 1}, ["steps.x=1"])


def test_presets_load_and_round_trip(tmp_path):
    for path in sorted((CONFIGS / "data").glob("model_*.yaml")):
        cfg = load_config(SimulationConfig, path)
        assert from_dict(SimulationConfig, to_dict(cfg)) == cfg


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        load_config(SimulationConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SimulationConfig, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(SimulationConfig, listy)


def test_cross_field_validation():
    with pytest.raises(ConfigError) as info:
        load_config(SimulationConfig, CONFIGS / "data" / "model_ii.yaml", ["lens.z_lens=2.0"])
    assert info.value.key == "lens.z_lens"


def test_cli_reports_config_errors_on_one_line(tmp_path):
    out = tmp_path / "x.zarr"
    result = run_cli("data", "simulate", "--out", out, "--workers", "1", "lens.einstein_radus=1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "lens.einstein_radus: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_training_recipes_load_and_check_the_schedule():
    from lensperf.train.tasks import TASKS

    for section, task in TASKS.items():
        config_type = task.config_type
        for recipe in ("demo", "cpu", "gpu"):
            load_config(config_type, CONFIGS / section / f"{recipe}.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(TASKS["pretrain"].config_type, CONFIGS / "pretrain" / "demo.yaml",
                    ["epochs=2", "optim.warmup_epochs=3"])  # fmt: skip
    assert info.value.key == "optim.warmup_epochs"
