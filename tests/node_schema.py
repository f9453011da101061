"""Node-compatibility snapshot: every node's ``/object_info``-style definition (id, input names and types,
output types and names), recorded in ``tests/fixtures/node_schema.json``.

``tests/test_node_schema.py`` fails when a change would break saved workflows or API graphs: a node id
removed, an input removed/renamed or retyped, a new *required* input, an output removed or retyped
(links address outputs by position). Adding nodes, optional inputs or outputs at the end is fine (the
test only warns that the snapshot is behind). After an intended change, re-record:

    python tests/node_schema.py --record

(or ``LATENTSYNC_RECORD_NODE_SCHEMA=1 python -m pytest tests/test_node_schema.py``) and commit the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "fixtures" / "node_schema.json"


def _type(entry) -> str:
    kind = entry[0]
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)  # choices (file lists) may change


def node_schema(pack) -> dict:
    """``{node_id: {"required": {name: type}, "optional": {...}, "outputs": [[type, name], ...]}}``."""
    out = {}
    for node_id, cls in sorted(pack.NODE_CLASS_MAPPINGS.items()):
        spec = cls.INPUT_TYPES()
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        out[node_id] = {
            "required": {k: _type(v) for k, v in spec.get("required", {}).items()},
            "optional": {k: _type(v) for k, v in spec.get("optional", {}).items()},
            "outputs": [[str(t), str(n)] for t, n in zip(cls.RETURN_TYPES, names)],
        }
    return out


def incompatibilities(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
    """(breaking changes, compatible additions) of ``current`` against ``recorded``."""
    breaking, added = [], []
    for node_id, old in recorded.items():
        new = current.get(node_id)
        if new is None:
            breaking.append(f"node {node_id} removed or renamed")
            continue
        old_inputs = {**old["required"], **old["optional"]}
        new_inputs = {**new["required"], **new["optional"]}
        for name, kind in old_inputs.items():
            if name not in new_inputs:
                breaking.append(f"{node_id}: input '{name}' removed or renamed")
            elif new_inputs[name] != kind:
                breaking.append(f"{node_id}: input '{name}' changed type {kind} -> {new_inputs[name]}")
        for name in new["required"]:
            if name not in old_inputs:
                breaking.append(f"{node_id}: new required input '{name}' (old graphs lack it: make it optional)")
            elif name in old["optional"]:
                breaking.append(f"{node_id}: input '{name}' became required")
        added += [f"{node_id}: new optional input '{n}'" for n in new["optional"] if n not in old_inputs]
        old_out, new_out = old["outputs"], new["outputs"]
        for i, (kind, name) in enumerate(old_out):
            if i >= len(new_out):
                breaking.append(f"{node_id}: output {i} '{name}' removed")
            elif new_out[i][0] != kind:
                breaking.append(f"{node_id}: output {i} '{name}' changed type {kind} -> {new_out[i][0]}")
        added += [f"{node_id}: new output '{n}'" for _, n in new_out[len(old_out):]]
    added += [f"new node {n}" for n in current if n not in recorded]
    return breaking, added


def load_snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


def record(pack) -> dict:
    schema = node_schema(pack)
    SNAPSHOT.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return schema


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import conftest  # ComfyUI stand-ins, and the pack imported as ComfyUI does

    if "--record" not in sys.argv[1:]:
        sys.exit("usage: python tests/node_schema.py --record")
    schema = record(conftest.load_pack())
    print(f"recorded {len(schema)} nodes in {SNAPSHOT}")
