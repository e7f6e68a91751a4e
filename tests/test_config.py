"""load_config: defaults < YAML < overrides, and one-line UserErrors for bad keys, values, files."""

from pathlib import Path

import pytest
import yaml

from ssl_kd.config import Config, LossConfig, PretrainConfig, TrainConfig, load_config, resolve_data_config, to_dict
from ssl_kd.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_dataclass_defaults_with_the_data_resolved():
    cfg = load_config()
    assert isinstance(cfg, Config)
    expected = Config()
    expected.data = resolve_data_config(expected.data)  # load_config fills the dataset's defaults, once
    assert cfg == expected and cfg.data.image_size == 32 and cfg.data.hflip == 0.0
    assert resolve_data_config(cfg.data) == cfg.data  # idempotent
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.loss, LossConfig)
    assert cfg.loss.method == "dlkd" and cfg.loss.dlkd.align_weight == 1.0
    assert cfg.eval.knn_ks == [1, 10, 20, 50, 200]
    pretrain = load_config(schema=PretrainConfig)
    expected = PretrainConfig()
    expected.data = resolve_data_config(expected.data)
    assert isinstance(pretrain, PretrainConfig) and pretrain == expected


def test_file_then_overrides_precedence(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 7\n  lr: 0.01\ndata:\n  image_size: 48\nout: runs/x\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.image_size, cfg.out) == (7, 0.01, 48, "runs/x")
    assert cfg.train.batch_size == TrainConfig().batch_size  # untouched keys keep their defaults

    cfg = load_config(path, ["train.epochs=3", "loss.queue_size=1024", "data.name=imagefolder", "train.resume=false"])
    assert cfg.train.epochs == 3  # the override beats the file
    assert cfg.train.lr == 0.01  # the file beats the default
    assert cfg.loss.queue_size == 1024 and cfg.data.name == "imagefolder" and cfg.train.resume is False
    # later overrides win over earlier ones; values are typed
    cfg = load_config(None, ["train.lr=1", "train.lr=0.5"])
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)


def test_override_values_may_contain_equals_signs():
    cfg = load_config(None, ["out=runs/a=b"])
    assert cfg.out == "runs/a=b"


def test_unknown_override_key_names_it_and_suggests_the_right_one():
    with pytest.raises(UserError) as err:
        load_config(None, ["train.epoch=5"])
    message = str(err.value)
    assert "train.epoch" in message and "'train.epochs'" in message
    assert "\n" not in message


def test_misspelled_section_suggests_the_full_key():
    with pytest.raises(UserError) as err:
        load_config(None, ["trian.epochs=5"])
    message = str(err.value)
    assert "trian" in message
    assert "'train.epochs'" in message, message  # not some unrelated key of the section


def test_unknown_key_in_a_file_names_it(tmp_path):
    path = _write(tmp_path, "loss:\n  queue_sise: 10\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert "loss.queue_sise" in str(err.value) and "'loss.queue_size'" in str(err.value)
    assert "run.yaml" in str(err.value)


@pytest.mark.parametrize("override", ["train.epochs=abc", "data.image_size=1.5", "train.resume=maybe", "loss.dlkd.align_weight=x"])
def test_wrong_type_is_a_user_error(override):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert override.split("=")[0] in str(err.value)


def test_wrong_type_in_a_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train.epochs"):
        load_config(_write(tmp_path, "train:\n  epochs: many\n"))


def test_override_without_equals_is_a_user_error():
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_invalid_yaml_and_non_mapping_are_user_errors(tmp_path):
    with pytest.raises(UserError):
        load_config(_write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(UserError):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_to_dict_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=4", "student.arch=resnet18"])
    path = _write(tmp_path, yaml.safe_dump(to_dict(cfg)))
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    top = yaml.safe_load(path.read_text()) or {}
    schema = PretrainConfig if "arch" in top else Config
    cfg = load_config(str(path), schema=schema)
    assert isinstance(cfg, schema)
    _assert_in(top, to_dict(cfg), "")  # every value in the file, at any depth, made it into the config


def _assert_in(values: dict, loaded: dict, where: str) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _assert_in(value, loaded[key], f"{where}{key}.")
        else:
            assert loaded[key] == value, f"{where}{key}"


def test_there_are_configs_to_check():
    assert CONFIGS, "no configs/*.yaml found"
