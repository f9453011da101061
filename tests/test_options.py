"""The option table (latentsync_core.options) is the one home of every user option: node widgets,
command-line flags, the streaming settings and the core functions' defaults all come from it."""

from __future__ import annotations

import inspect

import pytest
import torch

from latentsync_core import cli, options
from latentsync_core.options import OPTIONS, OptionError, StreamSettings


def _widgets(node_class) -> dict[str, tuple]:
    spec = node_class.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


# widgets that share a name with an option but are another setting: the loader's resolution is the model's
# face size ("auto" = read from the file), not Face Crop & Align's
NOT_OPTIONS = {("LatentSyncModelLoader", "resolution")}


def _option_widgets(pack):
    """(node id, widget name, option) for every node input that an option feeds."""
    by_widget = {o.widget: o for o in OPTIONS.values() if o.widget}
    found = []
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        for widget, spec in _widgets(cls).items():
            if (node_id, widget) in NOT_OPTIONS:
                continue
            name = {"mode": "audio_mode"}.get(widget, widget)  # Whisper Embedding's older widget name
            spec_option = by_widget.get(widget) or OPTIONS.get(name)
            if spec_option is not None and (widget == spec_option.widget or widget == "mode"):
                found.append((node_id, widget, spec_option, spec))
    return found


def test_node_widgets_are_the_table(pack):
    found = _option_widgets(pack)
    seen = {o.name for _, _, o, _ in found}
    # every option with a widget is shown by at least one node, with the table's default, range, tooltip
    assert {o.name for o in OPTIONS.values() if o.widget} - {"face"} <= seen
    for node_id, widget, spec_option, (kind, extra) in found:
        if spec_option.name == "face":  # two widgets (largest / index from left + face_index)
            assert (kind, extra) == options.face_inputs()["face"], node_id
            continue
        expected_kind, expected = spec_option.input()
        assert kind == expected_kind, (node_id, widget)
        assert extra == expected, (node_id, widget)
        assert spec_option.from_widget(extra["default"]) == spec_option.default, (node_id, widget)


def test_command_line_defaults_are_the_table():
    args = cli.build_parser().parse_args(["--video", "v.mp4", "--audio", "a.wav", "--out", "o.mp4"])
    settings = options.settings_from_flags(args)
    assert settings == StreamSettings()
    lip_sync = [o for name, group in options.GROUPS.items() if name not in ("score", "prepare", "train") for o in group
                if o.flag]
    for spec_option in lip_sync:
        assert spec_option.from_flag(getattr(args, spec_option.name)) == spec_option.default, spec_option.name
    flags = {a.dest for a in cli.build_parser()._actions}
    assert {o.name for o in lip_sync} <= flags  # compile, audio_mode, max_gap included
    # the score command: its options from the same table
    from latentsync_core import score_cli

    score_args = score_cli.build_parser().parse_args(["v.mp4"])
    for spec_option in (*options.SCORE, OPTIONS["face"]):
        assert spec_option.from_flag(getattr(score_args, spec_option.name)) == spec_option.default, spec_option.name
    from latentsync_core.train.commands import build_prepare_parser  # the prepare command: its options too

    prepare_args = build_prepare_parser().parse_args(["src", "ds"])
    for spec_option in (*options.PREPARE, OPTIONS["face"], OPTIONS["max_gap"]):
        assert spec_option.from_flag(getattr(prepare_args, spec_option.name)) == spec_option.default, spec_option.name
    from latentsync_core.train.commands import build_train_parser  # and the train command's

    train_args = build_train_parser().parse_args(["ds", "run"])
    for spec_option in options.TRAIN:
        assert spec_option.from_flag(getattr(train_args, spec_option.name)) == spec_option.default, spec_option.name


def test_core_defaults_are_the_table():
    from latentsync_core.audio import embed_audio
    from latentsync_core.face import FaceAligner, paste_back
    from latentsync_core.pipeline import LipSyncPipeline
    from latentsync_core.video_io import VideoWriter

    checked = 0
    for fn in (LipSyncPipeline.sync_faces, paste_back, FaceAligner.__init__, embed_audio, VideoWriter.__init__):
        for name, param in inspect.signature(fn).parameters.items():
            key = {"mode": "audio_mode"}.get(name, name)
            if key in OPTIONS and key != "resolution" and param.default is not inspect.Parameter.empty:
                assert param.default == OPTIONS[key].default, f"{fn.__qualname__}({name}=...)"
                checked += 1
    assert checked >= 10
    for group in (options.SamplingOptions, options.PasteOptions, options.AudioOptions, options.FaceOptions):
        assert {k: getattr(group(), k) for k in options.group_options(group)} == options.defaults(
            options.group_options(group))


@pytest.mark.parametrize("bf16, fp16, expected", [(True, True, torch.bfloat16), (False, True, torch.float16)])
def test_command_line_and_node_pick_the_same_auto_precision_on_cuda(pack, monkeypatch, bf16, fp16, expected):
    import importlib

    model_mod = importlib.import_module(pack.__name__ + ".nodes.model")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    bridge = model_mod.bridge
    monkeypatch.setattr(bridge, "is_device_cpu", lambda d: False)
    monkeypatch.setattr(bridge, "should_use_bf16", lambda d, model_params=0: bf16)
    monkeypatch.setattr(bridge, "should_use_fp16", lambda d, model_params=0: fp16)
    gpu = torch.device("cuda")
    assert cli.pick_dtype("auto", gpu) == expected
    assert model_mod.pick_dtype("auto", gpu) == expected
    from latentsync_core.train.step import resolve_precision

    assert {"bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision("auto", gpu)] == expected
    assert cli.pick_dtype("auto", torch.device("cpu")) == torch.float32


def test_choice_lists_are_written_once():
    from latentsync_core import audio, deepcache, sampling, vae
    from latentsync_core.face import paste

    assert sampling.SAMPLERS is options.SAMPLERS and sampling.MAX_CHUNK_BATCH is options.MAX_CHUNK_BATCH
    assert deepcache.DEEPCACHE_INTERVALS is options.DEEPCACHE_INTERVALS
    assert audio.MODES is options.AUDIO_MODES and paste.BLEND_MODES is options.BLEND_MODES
    assert set(vae.VAE_ENCODE_MODES) < set(options.VAE_ENCODE_MODES)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("steps", 1001, "use 1-1000"),
        ("steps", 0, "use 1 or more"),
        ("mask_grow", -100000, "use -64 or more"),
        ("silence_db", 50.0, "use -100.0 to -10.0"),
        ("silence_ms", -10, "use 0 or more"),
        ("feather", -5, "use -1 or more"),
        ("guidance", 1e9, "use 1.0-10.0"),
        ("seed", -5, "use 0 or more"),
        ("chunk_batch", 17, "use 0-16 \\(0 = auto"),
        ("deepcache", 7, "use 0 \\(off\\) or an interval 2-5"),
        ("blend", "lips", "use one of face, mouth"),
    ],
)
def test_out_of_range_values_are_refused_by_the_table(name, value, message):
    with pytest.raises(OptionError, match=message):
        StreamSettings(**{name: value})


def test_codes_mean_the_same_everywhere():
    assert StreamSettings(feather=-1).feather is None and StreamSettings(chunk_batch=0).chunk_batch == "auto"
    assert OPTIONS["silence"].from_widget("keep original") is True and OPTIONS["silence"].from_flag("keep") is True
    assert OPTIONS["deepcache"].from_widget("off") == 0 and OPTIONS["deepcache"].from_flag("3") == 3
    with pytest.raises(OptionError, match="--deepcache 1: use 0 \\(off\\)"):
        try:
            OPTIONS["deepcache"].from_flag("1")
        except OptionError as exc:
            raise OptionError(exc.option, exc.value, exc.for_flag()) from None


def test_readme_option_table_is_generated_from_the_table():
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parent.parent / "tools" / "readme_options.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(tool.parent))
    try:
        import readme_options
    finally:
        sys.path.remove(str(tool.parent))
    rows = readme_options.table().splitlines()[2:]
    assert len(rows) == len(OPTIONS) and all(f"`{name}`" in row for name, row in zip(OPTIONS, rows))
