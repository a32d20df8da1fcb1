"""Training configuration: the [train] and [model] tables, --set, and the shipped TOML files."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from conftest import REPO  # noqa: E402

from ecgstream.cli import main  # noqa: E402
from ecgstream.config import ConfigError  # noqa: E402
from ecgstream.models.consensus import ConsensusConfig  # noqa: E402
from ecgstream.models.consensus.config import REMOVED_SWITCHES  # noqa: E402
from ecgstream.runtime.model_file import read_spec  # noqa: E402
from ecgstream.training.config import TrainConfig, load_train_config  # noqa: E402

SHIPPED = ["consensus-mitdb-mlii", "consensus-ptbxl", "mmae-mitdb-mlii"]


def _toml(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_toml_gives_the_settings_of_its_shipped_model(name):
    """The [model] table of models/NAME.toml builds exactly the config stored in NAME.onnx (the
    removed switches were at the values that left the model unchanged; a field added after the
    file was exported is at its default)."""
    onnx_path = REPO / "models" / f"{name}.onnx"
    if not onnx_path.exists():
        pytest.skip("no shipped model in models/")
    cfg = load_train_config(REPO / "models" / f"{name}.toml", environ={})
    stored = dict(read_spec(onnx_path).params)
    for key in ("parameters", "macs_per_window"):
        stored.pop(key, None)
    if name.startswith("consensus"):
        assert {k: stored.pop(k) for k in REMOVED_SWITCHES if k in stored}
        # the refiner's floor is fitted by its training; the table leaves the default
        stored["refiner_floor"] = ConsensusConfig().refiner_floor
    # the [history] table gives the stored history section (none: none)
    spec = read_spec(onnx_path)
    assert cfg.history_spec(spec.thresholds) == spec.history
    model = cfg.model_config()
    built = json.loads(json.dumps(model.to_dict()))
    assert {k: built[k] for k in stored} == stored
    # a field newer than the file is at its default (the term it adds is off)
    default = json.loads(json.dumps(type(model)().to_dict()))
    assert {k: built[k] for k in set(built) - set(stored)} == {
        k: default[k] for k in set(built) - set(stored)
    }


@pytest.mark.parametrize(
    "table,message",
    [
        ("bank_s = 60.0\n", r"\[history\] weight: Field required"),
        ("weight = 1.0\nspan = 3\n", r"\[history\] span: Extra inputs"),
        ("weight = -2.0\n", r"\[history\] weight: Input should be greater"),
    ],
)
def test_a_bad_history_table_is_an_error_naming_the_key(tmp_path, table, message):
    path = _toml(tmp_path, f'[train]\nmodel = "consensus"\n[history]\n{table}')
    with pytest.raises(ConfigError, match=message):
        load_train_config(path, environ={})


def test_the_history_table_gives_the_spec_section_with_the_default_threshold_as_gate(tmp_path):
    path = _toml(tmp_path, '[train]\nmodel = "consensus"\n[history]\nweight = 3\nbank_s = 60\n')
    cfg = load_train_config(path, environ={})
    section = cfg.history_spec({"default": 24.6, "critical": 400.0})
    assert section["weight"] == 3.0 and section["bank_s"] == 60.0 and section["gate"] == 24.6
    assert load_train_config(None, environ={}).history_spec({"default": 1.0}) is None


def test_an_unknown_model_key_is_an_error_naming_it(tmp_path, capsys):
    path = _toml(tmp_path, '[train]\nmodel = "consensus"\n[model]\nnoise_wieght = 100.0\n')
    with pytest.raises(ConfigError, match=r"\[model\] noise_wieght: unknown key .*'consensus'"):
        load_train_config(path, environ={})
    assert main(["train", "--config", str(path), "--no-progress", "somewhere"]) == 2
    assert "noise_wieght: unknown key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "table, field",
    [
        ("noise_quantile = 1.5", "noise_quantile"),  # out of range
        ('neighbours = "many"', "neighbours"),  # not an int
        ("rhythm_weight = 0.1\nrhythm_span = 100", "rhythm_span"),  # longer than a segment
        ('population_covariance = "ledoit"', "population_covariance"),
        ("refiner_channels = 4\nrefiner_kernel = 2", "refiner_kernel"),
    ],
)
def test_a_bad_model_value_is_an_error_naming_the_field(tmp_path, table, field):
    path = _toml(tmp_path, f'[train]\nmodel = "consensus"\n[model]\n{table}\n')
    with pytest.raises(ConfigError, match=rf"^\[model\] {field}"):
        load_train_config(path, environ={})


def test_the_model_table_of_mmae_is_its_architecture(tmp_path):
    path = _toml(tmp_path, "[model]\ndim = 30\nheads = 4\n")
    with pytest.raises(ConfigError, match=r"\[model\] dim 30 must be divisible by heads 4"):
        load_train_config(path, environ={})
    with pytest.raises(ConfigError, match="noise_weight: unknown key for model kind 'mmae'"):
        TrainConfig(model_settings={"noise_weight": 1.0})


def test_sizes_from_train_and_settings_of_other_kinds_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"window: unknown key .*set by \[train\]"):
        TrainConfig(model="consensus", model_settings={"window": 500})
    with pytest.raises(ConfigError, match="kind 'uniad' takes no"):
        TrainConfig(model="uniad", model_settings={"dim": 8})
    with pytest.raises(ConfigError, match=r"unknown tables \['modle'\]"):
        load_train_config(_toml(tmp_path, "[modle]\ndim = 8\n"), environ={})


def test_a_model_key_in_the_train_table_points_to_the_model_table(tmp_path):
    path = _toml(tmp_path, '[train]\nmodel = "consensus"\nconsensus_noise_weight = 100.0\n')
    with pytest.raises(
        ConfigError, match=r"consensus_noise_weight: .*\[model\] table as noise_weight"
    ):
        load_train_config(path, environ={})


def test_set_and_environment_reach_both_tables(tmp_path):
    path = _toml(tmp_path, '[train]\nmodel = "consensus"\n[model]\nnoise_weight = 100.0\n')
    sets = {"noise_weight": "50", "model.refiner_dilations": "1,3", "seed": "4",
            "refiner_channels": "8", "train.refiner_epochs": "2"}  # fmt: skip
    cfg = load_train_config(
        path, {"window_s": 4.0}, sets, environ={"ECGSTREAM_MODEL__NEIGHBOURS": "2"}
    )
    model = cfg.model_config()
    assert (model.noise_weight, model.refiner_dilations, model.neighbours) == (50.0, (1, 3), 2)
    assert (model.window, cfg.seed, cfg.refiner_epochs) == (400, 4, 2)
    with pytest.raises(ConfigError, match=r"--set nosie_weight: unknown key; \[train\] keys"):
        load_train_config(path, sets={"nosie_weight": "1"}, environ={})
    with pytest.raises(ConfigError, match=r"--set train.noise_weight: unknown key; \[train\]"):
        load_train_config(path, sets={"train.noise_weight": "1"}, environ={})
    with pytest.raises(ConfigError, match=r"^\[model\] nosie: unknown key"):
        load_train_config(path, sets={"model.nosie": "1"}, environ={})
    with pytest.raises(ConfigError, match=r"\[model\] neighbours: .*'few' is not a valid"):
        load_train_config(path, sets={"neighbours": "few"}, environ={})


def test_a_stored_config_that_used_a_removed_switch_is_refused():
    assert ConsensusConfig.from_dict({"slope_weight": 0.0, "erode": 0, "noise_weight": 1.0})
    with pytest.raises(ValueError, match="removed.*'slope_weight': 0.5"):
        ConsensusConfig.from_dict({"slope_weight": 0.5})
