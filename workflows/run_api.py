#!/usr/bin/env python3
"""Run a LatentSync workflow on a ComfyUI server without the browser (standard library only).

    python workflows/run_api.py --server 127.0.0.1:8188 --video in.mp4 --audio speech.wav \
        workflows/api/latentsync_basic.json

Steps: upload the inputs (``/upload/image``), put their names into the workflow's loader nodes, queue it
(``/prompt``), follow progress over the websocket (``/ws``), read the result (``/history/{id}``) and
download every saved file (``/view``) into ``--out-dir``. Exits 0 on success; on failure it prints
ComfyUI's own error message (validation errors from ``/prompt``, or the failing node's exception) and
exits non-zero (1 execution error, 2 invalid workflow or prompt, 3 server unreachable, 4 timeout,
130 Ctrl-C). On a timeout or Ctrl-C the job is cancelled on the server too (removed from the queue
if it is still waiting, interrupted if it is running), so it does not keep the GPU busy.

Works with workflows in ComfyUI's API format ("Export (API)" in the menu): a JSON object mapping node
ids to ``{"class_type", "inputs"}``. Other inputs can be set with ``--set NODE.INPUT=VALUE`` (NODE: a
node id or a class type, e.g. ``--set LatentSyncSampler.steps=10``); each is checked against the
graph (and the server's node definitions for inputs the graph leaves out) before anything is uploaded.

Many clips: ``--batch MANIFEST`` (CSV with a header, or JSONL) runs the workflow once per row: columns
``video``, ``audio``, optional ``out`` (the row's folder under ``--out-dir``; default ``<row>_<video stem>``)
and ``NODE.INPUT`` columns (per-row ``--set``, e.g. ``LatentSyncSampler.seed``). Rows go to the ``--server``
URLs (repeat the flag: one row at a time per server). As ``python -m latentsync_core batch``: a rerun skips
rows done before with the same workflow, inputs and settings (state in ``OUT_DIR/.latentsync-batch/``), a
failing row is reported and the others go on, ``OUT_DIR/report.jsonl`` gets a line per row and a summary is
printed; exit 0 (all done or skipped), 1 (some failed), 130 (Ctrl-C: the rows in flight are cancelled on
their servers).
"""

from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import json
import mimetypes
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

# loader node class -> the input that names the uploaded file
VIDEO_LOADERS = {"LoadVideo": "file", "VHS_LoadVideo": "video"}
AUDIO_LOADERS = {"LatentSyncLoadAudio": "audio", "LoadAudio": "audio", "VHS_LoadAudioUpload": "audio"}
OUTPUT_KEYS = ("images", "gifs", "videos", "audio")  # where ComfyUI lists saved files in /history

EXIT_EXECUTION, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
CANCEL_TIMEOUT = 10.0  # seconds for each request that cancels the job on the server
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455


class ClientError(Exception):
    """A failure to report to the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_EXECUTION):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------- HTTP
class Comfy:
    """The few ComfyUI HTTP endpoints a headless run needs."""

    def __init__(self, server: str, timeout: float = 60.0):
        if "://" not in server:
            server = "http://" + server
        parts = urllib.parse.urlsplit(server)
        if parts.scheme not in ("http", "https"):
            raise ClientError(f"--server must be http(s)://host:port, got {server!r}", EXIT_INVALID)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, body bytes); HTTP error statuses are returned, not raised."""
        # the scheme is fixed to http(s) in __init__
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ClientError(f"cannot reach ComfyUI at {self.base}: {reason}", EXIT_UNREACHABLE) from err

    def json(self, method: str, path: str, payload=None):
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self.request(method, path, body, {"Content-Type": "application/json"} if body else None)
        try:
            parsed = json.loads(data.decode() or "null")
        except ValueError:
            parsed = None
        return status, parsed, data

    def upload(self, path: str) -> str:
        """Upload a local file into ComfyUI's input folder; returns the name loader nodes take."""
        if not os.path.isfile(path):
            raise ClientError(f"input file not found: {path}", EXIT_INVALID)
        boundary = uuid.uuid4().hex
        filename = header_quote(os.path.basename(path))
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        with open(path, "rb") as f:
            content = f.read()
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\ninput\r\n'.encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n".encode(),
                content,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        status, data = self.request(
            "POST", "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        if status != 200:
            raise ClientError(f"upload of {path} failed: HTTP {status} {data[:200]!r}")
        info = json.loads(data)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def download(self, item: dict, out_dir: str) -> str:
        query = urllib.parse.urlencode(
            {"filename": item["filename"], "subfolder": item.get("subfolder", ""), "type": item.get("type", "output")}
        )
        status, data = self.request("GET", f"/view?{query}")
        if status != 200:
            raise ClientError(f"download of {item['filename']} failed: HTTP {status}")
        os.makedirs(out_dir, exist_ok=True)
        target = os.path.join(out_dir, os.path.basename(item["filename"]))
        partial = os.path.join(out_dir, f".{os.path.basename(target)}.{uuid.uuid4().hex[:8]}.partial")
        try:  # complete or not at all: an earlier file of the same name survives a failed write
            with open(partial, "wb") as f:
                f.write(data)
            os.replace(partial, target)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
        return target


def header_quote(value: str) -> str:
    """A file name made safe for a quoted multipart header parameter, as browsers do (HTML form
    encoding): ``"`` -> ``%22``, CR -> ``%0D``, LF -> ``%0A``; everything else is sent as UTF-8."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


# ---------------------------------------------------------------------------------------- websocket
class WebSocket:
    """Minimal RFC 6455 client: text messages in, pings answered, binary previews skipped."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("websocket handshake: connection closed")
            head += chunk
        head, self._buf = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise OSError(f"websocket handshake refused: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()  # noqa: S324 (RFC 6455)
        if headers.get("sec-websocket-accept") != expected:
            raise OSError("websocket handshake: bad Sec-WebSocket-Accept")

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("websocket closed by server")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self, timeout: float) -> dict | None:
        """Next JSON text message, or None if nothing arrived within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        message, kind = b"", None
        try:
            while True:
                b0, b1 = self._read(2)
                opcode, n = b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", self._read(8))[0]
                mask = self._read(4) if b1 & 0x80 else None
                payload = self._read(n)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                if opcode == 0x8:
                    raise OSError("websocket closed by server")
                if opcode == 0x9:
                    self._send(0xA, payload)
                    continue
                if opcode in (0x1, 0x2):
                    kind, message = opcode, payload
                elif opcode == 0x0:
                    message += payload
                if b0 & 0x80 and kind is not None:
                    if kind == 0x1:
                        return json.loads(message.decode())
                    message, kind = b"", None  # binary = preview image: not needed headless
        except TimeoutError:
            return None

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()


# ----------------------------------------------------------------------------------------- workflow
def load_workflow(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise ClientError(
            f"{path} is a UI workflow; pass its API-format twin (workflows/api/...) or use 'Export (API)' in ComfyUI",
            EXIT_INVALID,
        )
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise ClientError(f"{path} is not an API-format workflow (node id -> class_type/inputs)", EXIT_INVALID)
    return data


def set_loader(prompt: dict, loaders: dict, value: str, what: str) -> list[str]:
    """Put an uploaded file name into every loader node of one kind; returns the node ids set."""
    ids = [nid for nid, node in prompt.items() if node["class_type"] in loaders]
    if not ids:
        raise ClientError(f"--{what} given but the workflow has no {what} loader ({', '.join(loaders)})", EXIT_INVALID)
    for nid in ids:
        prompt[nid].setdefault("inputs", {})[loaders[prompt[nid]["class_type"]]] = value
    return ids


def node_inputs(comfy: Comfy | None, class_type: str, cache: dict) -> set[str] | None:
    """Input names of a node class from the server (``/object_info/<class>``: required and optional),
    or None when the server does not say."""
    if comfy is None:
        return None
    if class_type not in cache:
        status, reply, _ = comfy.json("GET", f"/object_info/{urllib.parse.quote(class_type)}")
        info = reply.get(class_type) if status == 200 and isinstance(reply, dict) else None
        spec = info.get("input") if isinstance(info, dict) else None
        cache[class_type] = (
            {k for part in ("required", "optional") for k in (spec.get(part) or {})} if isinstance(spec, dict) else None
        )
    return cache[class_type]


def parse_overrides(prompt: dict, overrides: list[str], comfy: Comfy | None = None) -> list[tuple[list[str], str, object]]:
    """Check every ``NODE.INPUT=VALUE`` against the graph before anything is sent: NODE must be a node id
    or class type of the workflow, INPUT an input of that node (in the graph, or in the server's
    definition of the node for optional inputs the graph leaves out). Returns ``(node ids, input, value)``;
    VALUE is parsed as JSON when it is valid JSON (numbers, true/false), else taken as a string."""
    parsed, cache = [], {}
    for item in overrides:
        target, sep, raw = item.partition("=")
        node, dot, name = target.rpartition(".")
        ids = [node] if node in prompt else [nid for nid, n in prompt.items() if n["class_type"] == node]
        if not sep or not dot or not name or not ids:
            raise ClientError(
                f"--set {item!r}: expected NODE.INPUT=VALUE with NODE a node id or class type of the workflow",
                EXIT_INVALID,
            )
        for nid in ids:
            known = set(prompt[nid].get("inputs") or {})
            if name in known:
                continue
            defined = node_inputs(comfy, prompt[nid]["class_type"], cache)
            if defined is not None and name in defined:
                continue
            choices = sorted(known | (defined or set()))
            close = difflib.get_close_matches(name, choices, n=1)
            raise ClientError(
                f"--set {item!r}: node {nid} [{prompt[nid]['class_type']}] has no input {name!r}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (its inputs: {', '.join(choices) or 'none'})",
                EXIT_INVALID,
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        parsed.append((ids, name, value))
    return parsed


def apply_overrides(prompt: dict, overrides, comfy: Comfy | None = None) -> None:
    """Set ``--set`` values (strings ``NODE.INPUT=VALUE``, or what :func:`parse_overrides` returned)."""
    if overrides and isinstance(overrides[0], str):
        overrides = parse_overrides(prompt, overrides, comfy)
    for ids, name, value in overrides:
        for nid in ids:
            prompt[nid].setdefault("inputs", {})[name] = value


def format_prompt_error(reply) -> str:
    """ComfyUI's /prompt validation reply as readable lines."""
    if not isinstance(reply, dict):
        return f"invalid prompt: {reply!r}"
    err = reply.get("error") or {}
    lines = [f"{err.get('message', 'invalid prompt')}" + (f": {err['details']}" if err.get("details") else "")]
    for nid, node_err in (reply.get("node_errors") or {}).items():
        for e in node_err.get("errors", []):
            detail = f" ({e['details']})" if e.get("details") else ""
            lines.append(f"  node {nid} [{node_err.get('class_type', '?')}]: {e.get('message', '')}{detail}")
    return "\n".join(lines)


def format_execution_error(data: dict) -> str:
    kind = str(data.get("exception_type") or "Error").rsplit(".", 1)[-1]  # custom nodes' types carry a file path
    return f"node {data.get('node_id')} [{data.get('node_type')}] failed: {kind}: {data.get('exception_message', '').strip()}"


# ---------------------------------------------------------------------------------------------- run
def follow(ws: WebSocket | None, comfy: Comfy, prompt_id: str, deadline: float, log) -> None:
    """Wait until the prompt finished; raise ClientError on an execution error, interruption or timeout."""
    last_poll = 0.0
    while True:
        now = time.monotonic()
        if now > deadline:
            raise ClientError(f"timed out waiting for prompt {prompt_id}", EXIT_TIMEOUT)
        try:
            msg = ws.receive(timeout=min(2.0, max(0.05, deadline - now))) if ws else None
        except OSError as exc:  # the websocket dropped (reset, closed): the job runs on, so poll instead
            log(f"websocket lost ({exc}); polling the history")
            ws.close()
            ws, msg = None, None
        if msg is None:
            if ws is None:
                time.sleep(0.5)
            if time.monotonic() - last_poll > (1.0 if ws is None else 10.0):  # fallback: poll the history
                last_poll = time.monotonic()
                if history_entry(comfy, prompt_id) is not None:
                    return
            continue
        kind, data = msg.get("type"), msg.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "executing" and data.get("node") is not None:
            log(f"running node {data['node']}")
        elif kind == "progress":
            log(f"  node {data.get('node')}: {data.get('value')}/{data.get('max')}")
        elif kind == "execution_error":
            raise ClientError(format_execution_error(data), EXIT_EXECUTION)
        elif kind == "execution_interrupted":
            raise ClientError(f"prompt interrupted at node {data.get('node_id')} [{data.get('node_type')}]")
        elif kind == "execution_success" or (
            kind == "executing" and data.get("node") is None and data.get("prompt_id")
        ):
            return


def history_entry(comfy: Comfy, prompt_id: str) -> dict | None:
    """The finished prompt's history entry, or None while it is still queued or running."""
    status, reply, _ = comfy.json("GET", f"/history/{urllib.parse.quote(prompt_id)}")
    if status != 200 or not isinstance(reply, dict) or prompt_id not in reply:
        return None
    entry = reply[prompt_id]
    state = entry.get("status") or {}
    return entry if state.get("completed") or state.get("status_str") in ("success", "error") else None


def cancel(comfy: Comfy, prompt_id: str, log) -> None:
    """Stop our job on the server: remove it from the queue while it waits (``POST /queue``
    ``{"delete": [id]}``), interrupt it while it runs (``POST /interrupt`` ``{"prompt_id": id}``; the id is
    read by ComfyUI >= 0.3.4x, and the running prompt is checked first, so an older ComfyUI that ignores
    it never interrupts somebody else's job)."""
    comfy = Comfy(comfy.base, timeout=min(comfy.timeout, CANCEL_TIMEOUT))
    try:
        status, queue, _ = comfy.json("GET", "/queue")
        if status != 200 or not isinstance(queue, dict):
            raise ClientError(f"HTTP {status}")

        def ids(key):
            return {item[1] for item in queue.get(key) or [] if isinstance(item, (list, tuple)) and len(item) > 1}

        if prompt_id in ids("queue_pending"):
            comfy.json("POST", "/queue", {"delete": [prompt_id]})
            log(f"removed prompt {prompt_id} from the server's queue")
        elif prompt_id in ids("queue_running"):
            comfy.json("POST", "/interrupt", {"prompt_id": prompt_id})
            log(f"interrupted prompt {prompt_id} on the server")
    except ClientError as err:
        log(f"could not cancel prompt {prompt_id} on the server ({err}); cancel it in ComfyUI's queue")


def run(args, log=lambda s: print(s, file=sys.stderr), quiet: bool = False, on_queued=None) -> list[str]:
    comfy = Comfy(args.server, timeout=args.http_timeout)
    prompt = load_workflow(args.workflow)
    client_id = uuid.uuid4().hex
    deadline = time.monotonic() + args.timeout

    ws = None
    try:  # connect first so no message of our prompt is missed
        ws = WebSocket(comfy.host, comfy.port, f"/ws?clientId={client_id}")
    except OSError as err:
        log(f"websocket unavailable ({err}); polling /history instead")

    prompt_id = None
    try:
        overrides = parse_overrides(prompt, args.set or [], comfy)  # a typo must not cost an upload
        if args.video:
            name = comfy.upload(args.video)
            log(
                f"uploaded {args.video} -> {name} (nodes {', '.join(set_loader(prompt, VIDEO_LOADERS, name, 'video'))})"
            )
        if args.audio:
            name = comfy.upload(args.audio)
            log(
                f"uploaded {args.audio} -> {name} (nodes {', '.join(set_loader(prompt, AUDIO_LOADERS, name, 'audio'))})"
            )
        apply_overrides(prompt, overrides)

        status, reply, raw = comfy.json("POST", "/prompt", {"prompt": prompt, "client_id": client_id})
        if status != 200 or not isinstance(reply, dict) or "prompt_id" not in reply:
            raise ClientError(
                format_prompt_error(reply) if reply is not None else raw.decode(errors="replace"), EXIT_INVALID
            )
        prompt_id = reply["prompt_id"]
        log(f"queued prompt {prompt_id}")
        if on_queued is not None:
            on_queued(prompt_id)
        follow(ws, comfy, prompt_id, deadline, log)
        entry = None
        while entry is None:  # the history entry is written just after the last websocket message
            entry = history_entry(comfy, prompt_id)
            if entry is None:
                if time.monotonic() > deadline:
                    raise ClientError(f"timed out waiting for the history of prompt {prompt_id}", EXIT_TIMEOUT)
                time.sleep(0.2)
    except KeyboardInterrupt:
        if prompt_id is not None:
            cancel(comfy, prompt_id, log)
        raise
    except ClientError as err:
        if err.code == EXIT_TIMEOUT and prompt_id is not None:
            cancel(comfy, prompt_id, log)
        raise
    finally:
        if ws:
            ws.close()
    state = entry.get("status") or {}
    if state.get("status_str") == "error":
        errors = [data for kind, data in state.get("messages", []) if kind == "execution_error"]
        raise ClientError(format_execution_error(errors[0]) if errors else "execution failed", EXIT_EXECUTION)

    saved = []
    for node_out in (entry.get("outputs") or {}).values():
        for key in OUTPUT_KEYS:
            for item in node_out.get(key, []) or []:
                if (
                    isinstance(item, dict)
                    and "filename" in item
                    and (args.temp or item.get("type", "output") == "output")
                ):
                    saved.append(comfy.download(item, args.out_dir))
    if not saved:
        log("the workflow finished but saved no files")
    if not quiet:
        for path in saved:
            print(path)
    return saved


# --------------------------------------------------------------------------------------------- batch
BATCH_STATE = ".latentsync-batch"


def read_manifest(path: str) -> list[dict]:
    """Rows of a CSV (header line) or JSONL manifest."""
    import csv

    if not os.path.isfile(path):
        raise ClientError(f"--batch {path}: no such file", EXIT_INVALID)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if path.lower().endswith((".jsonl", ".json", ".ndjson")):
            try:
                rows = [json.loads(line) for line in fh if line.strip()]
            except json.JSONDecodeError as err:
                raise ClientError(f"--batch {path}: not JSON lines ({err})", EXIT_INVALID) from None
        else:
            rows = [dict(r) for r in csv.DictReader(fh)]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ClientError(f"--batch {path}: no rows (objects with video and audio)", EXIT_INVALID)
    unknown = sorted({k for r in rows for k in r if k not in ("video", "audio", "out") and "." not in k})
    if unknown:
        raise ClientError(f"--batch {path}: unknown column(s) {', '.join(unknown)} (video, audio, out, NODE.INPUT)",
                          EXIT_INVALID)
    return rows


def _file_id(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def plan_batch(args, rows: list[dict]) -> list[dict]:
    """One job per row: its files, ``--set`` list, output folder and settings key (``error`` when unusable)."""
    folder = os.path.dirname(os.path.abspath(args.batch))
    with open(args.workflow, "rb") as fh:
        workflow_hash = hashlib.sha256(fh.read()).hexdigest()
    jobs, names = [], set()
    for index, row in enumerate(rows, 1):
        paths = {k: os.path.join(folder, str(row.get(k) or "").strip()) if row.get(k) else "" for k in ("video", "audio")}
        stem = os.path.splitext(os.path.basename(paths["video"]))[0] or "row"
        name = str(row.get("out") or "").strip() or f"{index:04d}_{stem}"
        if name in names:
            raise ClientError(f"--batch: two rows write to {name}; give them different 'out' names", EXIT_INVALID)
        names.add(name)
        sets = [*(args.set or []), *(f"{k}={v}" for k, v in row.items() if "." in k and str(v).strip() != "")]
        job = {"row": index, **paths, "set": sets, "out": os.path.join(args.out_dir, name), "name": name}
        missing = [f"{k} {p or '(empty)'}" for k, p in paths.items() if not p or not os.path.isfile(p)]
        if missing:
            job["error"] = f"no such file: {', '.join(missing)}"
        else:
            key = [workflow_hash, _file_id(paths["video"]), _file_id(paths["audio"]), sets]
            job["key"] = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        jobs.append(job)
    return jobs


def _state_path(args, job: dict) -> str:
    return os.path.join(args.out_dir, BATCH_STATE, job["name"] + ".json")


def _is_done(args, job: dict) -> bool:
    try:
        with open(_state_path(args, job), encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return False
    return state.get("key") == job["key"] and all(os.path.isfile(p) for p in state.get("files", []))


def _record(args, job: dict, files: list[str]) -> None:
    path = _state_path(args, job)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump({"key": job["key"], "files": files}, fh)
    os.replace(path + ".tmp", path)


def run_batch(args, log=lambda s: print(s, file=sys.stderr)) -> int:
    """Every row of ``args.batch`` through the workflow, rows spread over the ``--server`` URLs."""
    import queue
    import threading

    jobs = plan_batch(args, read_manifest(args.batch))
    os.makedirs(args.out_dir, exist_ok=True)
    lines: list[dict] = []
    lock, stop = threading.Lock(), threading.Event()
    in_flight: dict[str, str] = {}  # server -> prompt id of its running row
    todo: queue.Queue = queue.Queue()
    report = open(os.path.join(args.out_dir, "report.jsonl"), "w", encoding="utf-8")  # noqa: SIM115

    def add(line: dict) -> None:
        with lock:
            if report.closed:
                return
            lines.append(line)
            report.write(json.dumps(line) + "\n")
            report.flush()

    for job in jobs:
        base = {"row": job["row"], "video": job["video"], "audio": job["audio"], "out": job["out"]}
        if "error" in job:
            add({**base, "status": "failed", "error": job["error"]})
        elif _is_done(args, job):
            add({**base, "status": "skipped", "reason": "done before with the same settings"})
        else:
            todo.put((job, base))

    def serve(server: str) -> None:
        while not stop.is_set():
            try:
                job, base = todo.get_nowait()
            except queue.Empty:
                return
            row_args = argparse.Namespace(**{**vars(args), "server": server, "video": job["video"],
                                             "audio": job["audio"], "set": job["set"], "out_dir": job["out"]})
            t0 = time.monotonic()
            try:
                files = run(row_args, log=lambda s, r=job["row"]: log(f"[row {r} @ {server}] {s}"), quiet=True,
                            on_queued=lambda pid: in_flight.__setitem__(server, pid))
            except (ClientError, OSError, ValueError) as err:  # this row failed: report it, go on with the others
                add({**base, "status": "failed", "error": str(err), "server": server,
                     "seconds": round(time.monotonic() - t0, 3)})
                continue
            finally:
                in_flight.pop(server, None)
            _record(args, job, files)
            add({**base, "status": "done", "files": files, "server": server, "seconds": round(time.monotonic() - t0, 3)})

    servers = args.server or ["127.0.0.1:8188"]
    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    finished = threading.Event()
    waiter = threading.Thread(target=lambda: ([t.join() for t in threads], finished.set()), daemon=True)
    waiter.start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        stop.set()  # no new rows, and the rows in flight are cancelled on their servers
        for server, prompt_id in list(in_flight.items()):
            cancel(Comfy(server, timeout=CANCEL_TIMEOUT), prompt_id, log)
        with lock:
            report.close()
        raise
    report.close()
    counts = {s: sum(1 for line in lines if line["status"] == s) for s in ("done", "skipped", "failed")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return EXIT_EXECUTION if counts["failed"] else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("workflow", help="workflow in API format (e.g. workflows/api/latentsync_basic.json)")
    p.add_argument("--server", action="append",
                   help="ComfyUI address (default 127.0.0.1:8188); with --batch repeat it to spread rows over servers")
    p.add_argument("--batch", metavar="MANIFEST",
                   help="run the workflow for every row of a CSV/JSONL manifest (video, audio, out, NODE.INPUT)")
    p.add_argument("--video", help="video file to upload into the workflow's video loader")
    p.add_argument("--audio", help="audio file to upload into the workflow's audio loader")
    p.add_argument("--out-dir", default=".", help="folder for the downloaded results (default: current folder)")
    p.add_argument(
        "--set",
        action="append",
        metavar="NODE.INPUT=VALUE",
        help="override an input; NODE is a node id or class type, e.g. LatentSyncSampler.steps=10 (repeatable)",
    )
    p.add_argument("--timeout", type=float, default=6 * 3600, help="give up after this many seconds (default 6 h)")
    p.add_argument("--http-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    p.add_argument("--temp", action="store_true", help="also download preview files (type 'temp')")
    args = p.parse_args(argv)
    if args.batch is None:
        if args.server and len(args.server) > 1:
            p.error("several --server URLs need --batch")
        args.server = (args.server or ["127.0.0.1:8188"])[0]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.batch is not None:
            return run_batch(args)
        run(args)
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
