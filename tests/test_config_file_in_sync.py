"""configs/digits-default.yaml spells out every config key, with the values the embedded default runs with."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from ssl_kd.config import Config, DataConfig
from ssl_kd.data import resolve_data_config

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "configs" / "digits-default.yaml"


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_key_of_the_dataclasses_is_in_the_file_and_no_other() -> None:
    schema = flat(OmegaConf.to_container(OmegaConf.structured(Config)))
    written = flat(yaml.safe_load(DEFAULT_FILE.read_text()))
    assert sorted(set(schema) - set(written)) == [], "keys missing from configs/digits-default.yaml"
    assert sorted(set(written) - set(schema)) == [], "keys in configs/digits-default.yaml that the config does not have"


def test_its_values_are_the_defaults_digits_resolves_to() -> None:
    """Every non-data value is the dataclass default; the data fields are digits' resolved defaults."""
    expected = flat(OmegaConf.to_container(OmegaConf.structured(Config)))
    data = OmegaConf.to_container(OmegaConf.structured(resolve_data_config(DataConfig(name="digits"))))
    expected.update({f"data.{key}": value for key, value in data.items()})
    written = flat(yaml.safe_load(DEFAULT_FILE.read_text()))
    assert {key: value for key, value in written.items() if expected[key] != value} == {}
