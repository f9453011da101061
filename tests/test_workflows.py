"""The shipped workflows: UI files, their API twins, thumbnails, node types, widget values and links.

Checked against the CURRENT definitions of this pack's nodes (INPUT_TYPES) and the recorded
definitions of the ComfyUI core / VideoHelperSuite nodes they use (tests/fixtures/workflows/
external_nodes.json, with the release each appeared in), so a node change that breaks a shipped
workflow fails here. Rebuild the files with tools/make_workflows.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
EXTERNAL = json.loads((Path(__file__).resolve().parent / "fixtures" / "workflows" / "external_nodes.json").read_text())
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # virtual nodes: in UI files only, never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
PACK_CNR_ID = "comfyui-latentsync"
OUTPUT_NODES = {"SaveVideo", "VHS_VideoCombine"}
# combo inputs listing the user's files: any name with a fitting extension is valid
FILE_INPUTS = {
    ("LoadVideo", "file"): (".mp4", ".mov", ".mkv", ".webm"),
    ("VHS_LoadVideo", "video"): (".mp4", ".mov", ".mkv", ".webm"),
    ("VAELoader", "vae_name"): (".safetensors", ".pt", ".ckpt"),
    ("LatentSyncLoadAudio", "audio"): (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".mp4"),
    ("LatentSyncModelLoader", "unet_name"): (".pt", ".safetensors"),
    ("LatentSyncWhisperLoader", "whisper"): (".pt", ".safetensors"),
    ("UpscaleModelLoader", "model_name"): (".pth", ".pt", ".safetensors", ".ckpt", ".bin"),
}
UI_FILES = sorted(WORKFLOWS.glob("*.json"))


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


@pytest.fixture(scope="module")
def defs(pack):
    out = {name: dict(d) for name, d in EXTERNAL["nodes"].items()}
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        out[name] = {
            "input": {k: v for k, v in inputs.items() if k in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(cls.RETURN_NAMES),
            "cnr_id": PACK_CNR_ID,
        }
    return out


# ------------------------------------------------------------------------------------------ helpers
def _spec(d: dict, name: str):
    for sec in ("required", "optional"):
        if name in d["input"].get(sec, {}):
            spec = d["input"][sec][name]
            t, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(t, list):
                return "COMBO", {**opts, "options": t}, sec
            return t, opts, sec
    return None


def _widgets(d: dict) -> list[tuple[str, str, dict]]:
    out = []
    for sec in ("required", "optional"):
        for name in d["input"].get(sec, {}):
            kind, opts, _ = _spec(d, name)
            if kind in WIDGET_TYPES and not opts.get("forceInput"):
                out.append((name, kind, opts))
    return out


def ui_widget_map(node: dict, d: dict) -> dict:
    """UI widgets_values -> {input name: value}, the way the front end assigns them on load."""
    values = node.get("widgets_values", [])
    if isinstance(values, dict):  # VideoHelperSuite
        return {k: v for k, v in values.items() if k != "videopreview"}
    out, i = {}, 0
    for name, kind, opts in _widgets(d):
        assert i < len(values), f"node {node['id']} {node['type']}: no UI value for widget {name!r}"
        out[name] = values[i]
        i += 1
        if kind == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
            assert values[i] in ("fixed", "increment", "decrement", "randomize"), f"{name}: control_after_generate"
            i += 1
        if kind == "COMBO" and (opts.get("image_upload") or opts.get("video_upload")):
            i += 1  # the upload button's value
    assert i == len(values), f"node {node['id']} {node['type']}: {len(values) - i} extra UI widget values"
    return out


def value_problems(node_type: str, name: str, value, d: dict) -> list[str]:
    spec = _spec(d, name)
    if spec is None:
        return [f"{node_type}.{name}: not an input of the node"]
    kind, opts, _ = spec
    where = f"{node_type}.{name}={value!r}"
    if (node_type, name) in FILE_INPUTS:
        ok = isinstance(value, str) and value.lower().endswith(FILE_INPUTS[(node_type, name)])
        return [] if ok else [f"{where}: not a file name"]
    if kind == "COMBO":
        return [] if value in opts.get("options", []) else [f"{where}: not one of {opts.get('options')}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: not a string"]
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
            return [f"{where}: not {kind}"]
        probs = []
        if "min" in opts and value < opts["min"]:
            probs.append(f"{where}: below min {opts['min']}")
        if "max" in opts and value > opts["max"]:
            probs.append(f"{where}: above max {opts['max']}")
        return probs
    return [f"{where}: {kind} is a socket, not a widget"]


def api_problems(api: dict, defs: dict) -> list[str]:
    """Everything ComfyUI's /prompt validation would reject, against the given definitions."""
    probs = []
    for nid, node in api.items():
        t = node["class_type"]
        if t not in defs:
            probs.append(f"node {nid}: unknown type {t}")
            continue
        d = defs[t]
        extra = {}
        if t == "VHS_VideoCombine":  # format-dependent widgets (pix_fmt, crf, ...)
            fmt = node["inputs"].get("format")
            extra = {w[0]: w for w in _spec(d, "format")[1].get("formats", {}).get(fmt, [])}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                src = api.get(str(value[0]))
                if src is None:
                    probs.append(f"node {nid}.{name}: link from missing node {value[0]}")
                    continue
                out_types = defs[src["class_type"]]["output"]
                if value[1] >= len(out_types):
                    probs.append(f"node {nid}.{name}: {src['class_type']} has no output {value[1]}")
                    continue
                spec = _spec(d, name)
                if spec is None:
                    probs.append(f"node {nid}.{name}: not an input of {t}")
                    continue
                got, want = out_types[value[1]], spec[0]
                if want != "*" and got != "*" and not set(got.split(",")) & set(want.split(",")):
                    probs.append(f"node {nid}.{name}: link type {got} into {want}")
            elif name in extra:
                w = extra[name]
                sub = {"input": {"required": {name: w[1:] if not isinstance(w[1], list) else [w[1], *w[2:]]}}}
                probs += value_problems(t, name, value, sub)
            else:
                probs += value_problems(t, name, value, d)
        for name in d["input"].get("required", {}):
            if name not in node["inputs"]:
                probs.append(f"node {nid} {t}: required input {name!r} missing")
    return probs


def api_links(api: dict) -> set:
    return {(str(v[0]), v[1], nid, name) for nid, n in api.items() for name, v in n["inputs"].items()
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)}  # fmt: skip


# -------------------------------------------------------------------------------------------- tests
def test_files_and_thumbnails():
    names = {p.stem for p in UI_FILES}
    assert {"latentsync_basic", "latentsync_vhs", "latentsync_long_video"} <= names
    assert names == {p.stem for p in (WORKFLOWS / "api").glob("*.json")}  # every UI file has an API twin
    for p in UI_FILES:
        jpg = p.with_suffix(".jpg")
        data = jpg.read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and 10_000 < len(data) < 400_000, jpg.name


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_node_types_and_registry_ids(path, defs):
    ui = json.loads(path.read_text())
    assert ui["version"] == 0.4 and {"nodes", "links", "last_node_id", "last_link_id"} <= ui.keys()
    ids = [n["id"] for n in ui["nodes"]]
    assert len(set(ids)) == len(ids) and max(ids) <= ui["last_node_id"]
    comfy = _version(EXTERNAL["comfyui_version"])
    for n in ui["nodes"]:
        t = n["type"]
        if t in FRONTEND_ONLY:
            continue
        assert t in defs, f"{path.name}: node type {t} is neither this pack's nor a recorded core/VHS node"
        props = n["properties"]
        assert props["cnr_id"] == defs[t]["cnr_id"], t  # ComfyUI Manager: "install missing nodes"
        assert props.get("ver"), t
        if defs[t]["cnr_id"] == "comfy-core":
            assert _version(defs[t]["since"]) <= comfy
    types = {n["type"] for n in ui["nodes"]}
    assert types & OUTPUT_NODES, "the workflow saves nothing"
    stages = {"LatentSyncSampler", "LatentSyncPasteBack", "LatentSyncFaceCropAlign", "LatentSyncWhisperEmbedding"}
    assert stages <= types or "LatentSyncLipSyncVideo" in types, "neither the node stages nor the one-node job"
    note = " ".join(n["widgets_values"][0] for n in ui["nodes"] if n["type"] in FRONTEND_ONLY)
    for where in ("latentsync/latentsync_unet.pt", "latentsync/whisper/tiny.pt", "vae/sd-vae-ft-mse.safetensors"):
        assert where in note, f"{path.name}: the notes must say where {where} goes"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_and_api_twins_describe_the_same_graph(path, defs):
    ui = json.loads(path.read_text())
    api = json.loads((WORKFLOWS / "api" / path.name).read_text())
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY}
    assert set(nodes) == set(api)
    for nid, n in nodes.items():
        assert api[nid]["class_type"] == n["type"]
    # links: UI [id, from, slot, to, to_slot, type] with to_slot indexing the target's inputs list
    ui_links = set()
    by_id = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, slot, dst, dst_slot, ltype in ui["links"]:
        target = by_id[dst]["inputs"][dst_slot]
        assert target["link"] == link_id
        assert link_id in by_id[src]["outputs"][slot]["links"]
        assert ltype == by_id[src]["outputs"][slot]["type"]
        ui_links.add((str(src), slot, str(dst), target["name"]))
    assert ui_links == api_links(api)
    # widget values (the UI keeps a value for linked widgets too: the link wins)
    for nid, n in nodes.items():
        linked = {name for (_, _, dst, name) in ui_links if dst == nid}
        ui_values = {k: v for k, v in ui_widget_map(n, defs[n["type"]]).items() if k not in linked}
        api_values = {k: v for k, v in api[nid]["inputs"].items() if k not in linked}
        assert ui_values == api_values, f"{path.name} node {nid} {n['type']}"


@pytest.mark.parametrize("path", sorted((WORKFLOWS / "api").glob("*.json")), ids=lambda p: p.stem)
def test_api_workflow_valid_for_current_nodes(path, defs):
    api = json.loads(path.read_text())
    assert api_problems(api, defs) == []
    assert {n["class_type"] for n in api.values()} & OUTPUT_NODES
    # the graph is acyclic
    deps = {nid: {src for (src, _, dst, _) in api_links(api) if dst == nid} for nid in api}
    done: set = set()
    while len(done) < len(api):
        ready = {nid for nid in api if nid not in done and deps[nid] <= done}
        assert ready, f"{path.name}: cycle"
        done |= ready


def test_long_video_graph_streams_from_load_video_to_save_video():
    """Load Video -> Lip Sync Video (audio, model, VAE, whisper wired) -> Save Video as a remux (no re-encode)."""
    api = json.loads((WORKFLOWS / "api" / "latentsync_long_video.json").read_text())
    by_type = {n["class_type"]: nid for nid, n in api.items()}
    assert set(by_type) == {"LoadVideo", "LatentSyncLoadAudio", "LatentSyncWhisperLoader", "LatentSyncModelLoader",
                            "VAELoader", "LatentSyncLipSyncVideo", "SaveVideo"}  # fmt: skip
    job, save = by_type["LatentSyncLipSyncVideo"], by_type["SaveVideo"]
    assert api_links(api) == {
        (by_type["LoadVideo"], 0, job, "video"),
        (by_type["LatentSyncLoadAudio"], 0, job, "audio"),
        (by_type["LatentSyncModelLoader"], 0, job, "model"),
        (by_type["VAELoader"], 0, job, "vae"),
        (by_type["LatentSyncWhisperLoader"], 0, job, "whisper"),
        (job, 0, save, "video"),
    }
    assert api[job]["inputs"]["video_path"] == ""  # the VIDEO input is used, not a path
    assert (api[save]["inputs"]["format"], api[save]["inputs"]["codec"]) == ("auto", "auto")  # stream copy


def test_node_ids_are_the_same_in_every_graph():
    """`--set 9.steps=10` and `--set 1.file=...` mean the same thing in every shipped workflow."""
    same = {"1": ("LoadVideo", "VHS_LoadVideo"), "3": ("LatentSyncLoadAudio",), "4": ("LatentSyncWhisperLoader",),
            "7": ("LatentSyncModelLoader",), "8": ("VAELoader",),
            "9": ("LatentSyncSampler", "LatentSyncLipSyncVideo")}  # fmt: skip
    for path in sorted((WORKFLOWS / "api").glob("*.json")):
        api = json.loads(path.read_text())
        for nid, types in same.items():
            assert api[nid]["class_type"] in types, f"{path.name}: node {nid} is {api[nid]['class_type']}"
        assert {"seed", "steps", "guidance", "deepcache"} <= set(api["9"]["inputs"]), path.name


def test_a_breaking_node_change_is_caught(defs):
    """The validator is not vacuous: changing an input the shipped workflow uses makes it fail."""
    api = json.loads((WORKFLOWS / "api" / "latentsync_basic.json").read_text())
    broken = copy.deepcopy(defs)
    req = broken["LatentSyncSampler"]["input"]["required"]
    req["steps"] = ("INT", {**req["steps"][1], "max": 10})
    req["strength"] = ("FLOAT", {"default": 1.0})
    broken["LatentSyncFaceCropAlign"]["input"]["required"]["face"] = (["biggest", "index"], {})
    broken["LatentSyncPasteBack"]["input"]["required"]["faces"] = ("LATENT",)
    probs = "\n".join(api_problems(api, broken))
    assert "steps=20: above max 10" in probs
    assert "required input 'strength' missing" in probs
    assert "face='largest': not one of" in probs
    assert "link type IMAGE into LATENT" in probs


def test_external_node_list_names_versions():
    for name, d in EXTERNAL["nodes"].items():
        assert d["cnr_id"] in ("comfy-core", "comfyui-videohelpersuite") and _version(d["since"]), name
    core = {n for n, d in EXTERNAL["nodes"].items() if d["cnr_id"] == "comfy-core"}
    assert {"LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo", "VAELoader"} <= core


def test_restore_workflow_puts_a_restorer_between_sampler_and_paste_back(defs):
    """latentsync_restore: Sampler -> Upscale Image (using Model) -> Paste Back with blend = mouth."""
    api = json.loads((WORKFLOWS / "api" / "latentsync_restore.json").read_text())
    by_type = {n["class_type"]: nid for nid, n in api.items()}
    upscale, paste = api[by_type["ImageUpscaleWithModel"]], api[by_type["LatentSyncPasteBack"]]
    assert upscale["inputs"]["image"] == [by_type["LatentSyncSampler"], 0]
    assert upscale["inputs"]["upscale_model"] == [by_type["UpscaleModelLoader"], 0]
    assert paste["inputs"]["faces"] == [by_type["ImageUpscaleWithModel"], 0]
    assert paste["inputs"]["face_track"] == [by_type["LatentSyncSampler"], 1]
    assert paste["inputs"]["blend"] == "mouth"
    assert "blend" in defs["LatentSyncPasteBack"]["input"]["required"]
    broken = copy.deepcopy(defs)
    broken["LatentSyncPasteBack"]["input"]["required"]["blend"] = [["face"], {}]
    assert any("blend='mouth': not one of" in p for p in api_problems(api, broken))
