"""Node compatibility: no change may break saved workflows against the recorded snapshot (see node_schema.py)."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
from node_schema import SNAPSHOT, incompatibilities, load_snapshot, node_schema, record


def test_no_incompatible_node_change(pack):
    if os.environ.get("LATENTSYNC_RECORD_NODE_SCHEMA"):
        record(pack)
    breaking, added = incompatibilities(load_snapshot(), node_schema(pack))
    assert not breaking, (
        "incompatible node changes (saved workflows would break):\n  " + "\n  ".join(breaking)
        + f"\nIf intended, re-record {SNAPSHOT.name}: python tests/node_schema.py --record"
    )
    if added:
        warnings.warn(f"{SNAPSHOT.name} is behind (compatible additions: {'; '.join(added)}); "
                      "re-record: python tests/node_schema.py --record", stacklevel=1)


def test_snapshot_covers_the_registered_nodes(pack):
    recorded = load_snapshot()
    assert set(recorded) <= set(pack.NODE_CLASS_MAPPINGS)
    assert recorded["LatentSyncSampler"]["outputs"][0] == ["IMAGE", "faces"]


@pytest.fixture
def schema(pack):
    return node_schema(pack)


def test_the_check_catches_each_kind_of_break(schema):
    def changed(edit):
        new = copy.deepcopy(schema)
        edit(new)
        return incompatibilities(schema, new)

    assert changed(lambda s: None) == ([], [])
    cases = {
        "removed or renamed": lambda s: s.pop("LatentSyncPasteBack"),
        "input 'seed' removed": lambda s: s["LatentSyncSampler"]["required"].pop("seed"),
        "changed type INT -> FLOAT": lambda s: s["LatentSyncSampler"]["required"].update(steps="FLOAT"),
        "new required input 'extra'": lambda s: s["LatentSyncSampler"]["required"].update(extra="IMAGE"),
        "output 1 'face_track' changed type": lambda s: s["LatentSyncSampler"]["outputs"].__setitem__(1, ["MASK", "face_track"]),
        "output 1 'face_track' removed": lambda s: s["LatentSyncSampler"]["outputs"].pop(1),
    }  # fmt: skip
    for expected, edit in cases.items():
        breaking, _ = changed(edit)
        assert any(expected in b for b in breaking), (expected, breaking)
    # compatible additions pass (and are listed)
    breaking, added = changed(lambda s: s["LatentSyncSampler"]["optional"].update(extra="IMAGE"))
    assert breaking == [] and added == ["LatentSyncSampler: new optional input 'extra'"]
    breaking, added = changed(lambda s: s.update(LatentSyncFutureNode={"required": {}, "optional": {}, "outputs": []}))
    assert breaking == [] and added == ["new node LatentSyncFutureNode"]


def test_registry_metadata():
    """pyproject: classifiers the Comfy Registry validates, and an Icon URL that serves a file of this repo
    (square, at most 400x400 px, PNG)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    import cv2
    from conftest import ROOT

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    classifiers = set(meta["project"]["classifiers"])
    assert {"Operating System :: OS Independent", "Environment :: GPU :: NVIDIA CUDA"} <= classifiers
    repo = meta["project"]["urls"]["Repository"].replace("https://github.com/", "")
    icon = meta["tool"]["comfy"]["Icon"]
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert icon.startswith(prefix), icon
    path = ROOT / icon[len(prefix):]
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and path.suffix == ".png"
    assert image.shape[0] == image.shape[1] <= 400
