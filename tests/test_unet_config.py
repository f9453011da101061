"""U-Net config reading: the official YAML (whole file or model section), JSON, dicts, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from latentsync_core.errors import CheckpointError
from latentsync_core.unet import UNetConfig, load_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "unet"


def test_official_yaml_whole_file_and_model_section(tmp_path):
    whole = load_config(FIXTURES / "stage2.yaml")
    assert whole == UNetConfig()  # the defaults are the released model
    assert whole.norm_eps == 1e-5 and whole.block_out_channels == (320, 640, 1280, 1280)
    section = tmp_path / "model.yaml"
    section.write_text(yaml.safe_dump(yaml.safe_load((FIXTURES / "stage2.yaml").read_text())["model"]))
    assert load_config(section) == whole
    assert load_config(str(section)) == whole


def test_json_and_dict_and_round_trip():
    cfg = load_config(FIXTURES / "config.json")
    assert cfg.block_out_channels == (32, 32, 64, 64)
    assert load_config(json.loads((FIXTURES / "config.json").read_text())) == cfg
    assert load_config(cfg.to_dict()) == cfg
    assert load_config(cfg) is cfg
    assert load_config(None) == UNetConfig()
    assert cfg.heads() == (8, 8, 8, 8)


def test_unknown_keys_are_ignored_with_a_warning(caplog):
    assert load_config({"_class_name": "UNet3DConditionModel", "foo": 1}) == UNetConfig()
    assert "foo" in caplog.text and "_class_name" not in caplog.text


@pytest.mark.parametrize(
    "change",
    [
        {"resnet_time_scale_shift": "scale_shift"},
        {"use_linear_projection": True},
        {"down_block_types": ["DownBlock3D"]},
        {"up_block_types": ["UpBlock3D", "Foo", "UpBlock3D", "UpBlock3D"]},
        {"motion_module_kwargs": {"attention_block_types": ["Temporal_Cross"]}},
        {"motion_module_kwargs": {"bogus": 1}},
    ],
)
def test_unsupported_options_raise(change):
    with pytest.raises(CheckpointError, match="U-Net config"):
        load_config({**UNetConfig().to_dict(), **change})


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(CheckpointError, match="mapping"):
        load_config(lst)
