"""U-Net loading: formats, prefixes, dtypes without transient copies, and the errors for wrong files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from latentsync_core.convert import main as convert_main
from latentsync_core.errors import CheckpointError, ModelMissingError
from latentsync_core.unet import build_unet, load_config, load_unet
from latentsync_core.unet.motion import sinusoid_table

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "unet"
CONFIG = FIXTURES / "config.json"
CKPT = FIXTURES / "latentsync_unet.pt"


@pytest.fixture(scope="module")
def official_sd():
    return torch.load(CKPT, weights_only=True)["state_dict"]


def assert_same_weights(model, state_dict):
    loaded = model.state_dict()
    assert loaded.keys() == state_dict.keys()
    for k, v in state_dict.items():
        assert torch.equal(loaded[k].float(), v.float()), k


def tiny_config(**changes):
    cfg = json.loads(CONFIG.read_text())
    cfg.update(changes)
    return cfg


def test_official_container_loads_exactly(official_sd):
    model = load_unet(CONFIG, CKPT)
    assert_same_weights(model, official_sd)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("prefix", ["", "module.", "unet.", "module.unet."])
def test_bare_and_prefixed_state_dicts(tmp_path, official_sd, prefix):
    path = tmp_path / "bare.pt"
    torch.save({prefix + k: v for k, v in official_sd.items()}, path)
    assert_same_weights(load_unet(CONFIG, path), official_sd)


def test_missing_position_buffers_are_recomputed(official_sd):
    partial = {k: v for k, v in official_sd.items() if not k.endswith("pos_encoder.pe")}
    assert len(partial) < len(official_sd)
    loaded = load_unet(CONFIG, partial).state_dict()
    assert loaded.keys() == official_sd.keys()
    for k, v in official_sd.items():
        if k in partial:
            assert torch.equal(loaded[k], v), k
            continue
        # The official formula, recomputed here: torch's float32 exp runs through MKL, whose result differs
        # by 1 ulp between instruction sets (the fixture's 64-wide table vs AVX-512's: 2 of its 32 div_term
        # entries). So: exactly this machine's official table, and the fixture's within 1 ulp.
        assert torch.equal(loaded[k], sinusoid_table(v.shape[2], v.shape[1])), k
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=2e-6)


def test_safetensors_round_trip_via_cli(tmp_path, official_sd, capsys):
    out = tmp_path / "unet.safetensors"
    assert convert_main([str(CKPT), str(out), "--config", str(CONFIG)]) == 0
    assert "wrote 1244 tensors" in capsys.readouterr().out
    assert_same_weights(load_unet(CONFIG, out), official_sd)

    half = tmp_path / "unet_fp16.safetensors"
    assert convert_main([str(CKPT), str(half), "--config", str(CONFIG), "--dtype", "fp16"]) == 0
    from safetensors import safe_open

    with safe_open(str(half), "pt") as fh:
        assert fh.get_tensor("conv_in.weight").dtype == torch.float16
    model = load_unet(CONFIG, half, dtype=torch.float16)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float16}


def test_converter_rejects_wrong_file_and_output_name(tmp_path, capsys):
    whisper = tmp_path / "tiny.pt"
    torch.save({"dims": {"n_mels": 80}, "model_state_dict": {"encoder.conv1.weight": torch.zeros(2, 2),
                                                            "encoder.blocks.0.attn.query.weight": torch.zeros(2, 2)}},
               whisper)
    assert convert_main([str(whisper), str(tmp_path / "x.safetensors")]) == 1
    assert "whisper" in capsys.readouterr().err
    assert convert_main([str(CKPT), str(tmp_path / "x.pt"), "--config", str(CONFIG)]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("dst", ["/proc/x.safetensors", "/sys/latentsync/x.safetensors", "{tmp}/file/x.safetensors"])
def test_converter_unwritable_output_is_one_line(tmp_path, capsys, dst):
    """/proc, a read-only place, a file where the folder should be: one line, exit 2, no traceback."""
    (tmp_path / "file").write_text("a file, not a folder")
    code = convert_main([str(CKPT), dst.format(tmp=tmp_path), "--config", str(CONFIG)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: output ") and err.count("\n") == 1 and "Traceback" not in err
    assert "writable" in err


def test_converter_writes_resolution_metadata(tmp_path, capsys):
    """The face size survives conversion: from --resolution, or from the source name (1.6 -> 512)."""
    import shutil

    from latentsync_core.checkpoints import guess_unet_resolution

    src16 = tmp_path / "LatentSync-1.6" / "latentsync_unet.pt"
    src16.parent.mkdir()
    shutil.copy(CKPT, src16)
    plain = tmp_path / "converted.safetensors"  # a name that says nothing about 1.6
    assert convert_main([str(src16), str(plain), "--config", str(CONFIG)]) == 0
    assert guess_unet_resolution("converted.safetensors", str(plain)) == 512
    forced = tmp_path / "forced_1.6.safetensors"  # the name says 512, the flag wins
    assert convert_main([str(CKPT), str(forced), "--config", str(CONFIG), "--resolution", "256"]) == 0
    assert guess_unet_resolution(forced.name, str(forced)) == 256
    default = tmp_path / "u.safetensors"
    assert convert_main([str(CKPT), str(default), "--config", str(CONFIG)]) == 0
    from safetensors import safe_open

    with safe_open(str(default), "pt") as fh:
        assert fh.metadata()["resolution"] == "256"


def test_converter_keeps_an_earlier_output_when_it_fails(tmp_path, capsys):
    out = tmp_path / "u.safetensors"
    out.write_bytes(b"earlier output")
    wrong = tmp_path / "wrong.pt"
    torch.save({"encoder.conv1.weight": torch.zeros(2)}, wrong)
    assert convert_main([str(wrong), str(out), "--config", str(CONFIG)]) == 1
    assert out.read_bytes() == b"earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.safetensors", "wrong.pt"]


class _Float32Allocations(TorchDispatchMode):
    """Records every float32 tensor (of a real device, > 1000 elements) an op produces."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta and t.dtype == torch.float32 and t.numel() > 1000:
                self.seen.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_fp16_file_loads_without_fp32_copy(tmp_path, official_sd, suffix):
    half_sd = {k: v.half() for k, v in official_sd.items()}
    path = tmp_path / f"half{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": half_sd}, path)
    else:
        from safetensors.torch import save_file

        save_file(half_sd, str(path))
    with _Float32Allocations() as rec:
        model = load_unet(CONFIG, path, dtype=torch.float16)
    assert rec.seen == []
    assert {t.dtype for t in model.state_dict().values()} == {torch.float16}
    assert_same_weights(model, half_sd)


def test_same_dtype_state_dict_is_adopted_not_copied(official_sd):
    half_sd = {k: v.half() for k, v in official_sd.items()}
    model = load_unet(CONFIG, half_sd, dtype=torch.float16)
    params = dict(model.named_parameters())
    assert params["conv_in.weight"].data_ptr() == half_sd["conv_in.weight"].data_ptr()


def test_meta_device_with_checkpoint(official_sd):
    model = load_unet(CONFIG, CKPT, device="meta", dtype=torch.bfloat16)
    assert all(t.is_meta and t.dtype == torch.bfloat16 for t in model.state_dict().values())


def test_no_checkpoint_gives_random_weights_on_cpu():
    model = load_unet(CONFIG, None, dtype=torch.float16)
    assert not any(t.is_meta for t in model.state_dict().values())
    assert model.conv_in.weight.dtype == torch.float16 and model.conv_in.weight.abs().sum() > 0


# --- wrong files ------------------------------------------------------------------------------------


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(ModelMissingError, match="not found"):
        load_unet(CONFIG, tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = tmp_path / "latentsync_unet.pt"
    path.write_bytes(CKPT.read_bytes()[: CKPT.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_unet(CONFIG, path)


def test_pickled_objects_are_refused(tmp_path):
    path = _save(tmp_path, "evil.pt", {"state_dict": {"conv_in.weight": torch.zeros(1)}, "obj": Path("x")})
    # the class as pickle names it: pathlib.PosixPath up to Python 3.12, pathlib._local.PosixPath from 3.13
    with pytest.raises(CheckpointError, match=r"holds Python objects other than tensors \(pathlib\.[\w.]*Path\)") as err:
        load_unet(CONFIG, path)
    assert "weights_only" not in str(err.value)  # never pass on torch's advice to load unsafely


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("random.pt", bytes(range(256)) * 16, r"random\.pt \(4,096 bytes\) is not a PyTorch checkpoint"),
        ("empty.pt", b"", r"empty\.pt is empty \(0 bytes\).*download it again"),
        ("empty.safetensors", b"", r"empty\.safetensors is empty \(0 bytes\)"),
        ("notes.pt", b"hello, this is a text file", r"could not be read as a PyTorch checkpoint.*\(KeyError"),
        ("truncated.pt", None, r"truncated\.pt \(5,000 bytes\).*may be truncated \(an interrupted download\)"),
    ],
)
def test_unreadable_files_say_what_they_are(tmp_path, name, content, expected):
    """Random bytes are not "Python objects", an empty file says so, and no message ends in nothing or
    repeats torch's "Re-running torch.load with weights_only=False will likely succeed"."""
    path = tmp_path / name
    path.write_bytes(CKPT.read_bytes()[:5000] if content is None else content)
    with pytest.raises(CheckpointError, match=expected) as err:
        load_unet(CONFIG, path)
    message = str(err.value)
    assert "weights_only" not in message and "Python objects" not in message
    assert not message.rstrip().endswith(":") and "\n" not in message


def test_whisper_file(tmp_path):
    sd = {"encoder.conv1.weight": torch.zeros(384, 80, 3), "encoder.blocks.0.attn.query.weight": torch.zeros(384, 384)}
    path = _save(tmp_path, "tiny.pt", {"dims": {"n_mels": 80}, "model_state_dict": sd})
    with pytest.raises(CheckpointError, match="whisper") as err:
        load_unet(CONFIG, path)
    assert "missing" in str(err.value) and "unexpected" in str(err.value)


def test_sd15_unet_file(tmp_path):
    cfg = tiny_config(use_motion_module=False, cross_attention_dim=768, in_channels=4)
    path = _save(tmp_path, "sd15.pt", build_unet(cfg, "cpu").state_dict())
    with pytest.raises(CheckpointError, match="Stable Diffusion U-Net") as err:
        load_unet(CONFIG, path)
    assert "motion_modules" in str(err.value)  # names the first missing keys


def test_latentsync_without_temporal_layers(tmp_path):
    path = _save(tmp_path, "stage1.pt", {"state_dict": build_unet(tiny_config(use_motion_module=False), "cpu").state_dict()})
    with pytest.raises(CheckpointError, match="without temporal layers"):
        load_unet(CONFIG, path)


def test_config_that_does_not_fit_the_file():
    full = load_config(FIXTURES / "stage2.yaml")  # the 1.5 config with the tiny (32-channel) weights
    with pytest.raises(CheckpointError, match="different shape") as err:
        load_unet(full, CKPT, device="meta")
    assert "check that the config matches" in str(err.value)


def test_empty_and_non_tensor_files(tmp_path):
    with pytest.raises(CheckpointError, match="state dict"):
        load_unet(CONFIG, _save(tmp_path, "a.pt", {"global_step": 3}))
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_unet(CONFIG, {})
