"""The typed training config: defaults, YAML, overrides, rejection of bad keys and values."""

from __future__ import annotations

import pytest

from lungct.config import TrainConfig, load_config, make_config, save_config
from lungct.errors import ConfigError


def test_round_trip_through_yaml(tmp_path):
    cfg = make_config({"model": "resnet18", "epochs": 3, "lr": "0.01", "augment": "false"})
    assert cfg.epochs == 3 and cfg.lr == 0.01 and cfg.augment is False
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_cli_overrides_win_over_file(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 7\nbatch_size: 4\n")
    cfg = load_config(tmp_path / "c.yaml", {"epochs": 2})
    assert cfg.epochs == 2 and cfg.batch_size == 4


@pytest.mark.parametrize(
    "values",
    [
        {"epochs_typo": 3},
        {"epochs": "many"},
        {"epochs": 2.5},
        {"split": "leaky"},
        {"augment": "maybe"},
        {"lr": -1},
        {"val_fraction": 0.7},
    ],
)
def test_bad_values_are_rejected(values):
    with pytest.raises(ConfigError):
        make_config(values)


def test_bad_yaml_file(tmp_path):
    (tmp_path / "c.yaml").write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.yaml")


def test_defaults_are_valid():
    assert TrainConfig().split == "grouped"
