"""workflows/run_api.py against a stand-in ComfyUI server on 127.0.0.1 (HTTP + websocket, threads).

The stand-in speaks the endpoints the client uses with ComfyUI's reply shapes (server.py and
execution.py of ComfyUI 0.3.64): /upload/image, /prompt (incl. a 400 validation reply), /ws (status,
executing, progress, a binary preview, a ping, execution_error / execution_success), /history/{id}, /view.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import hashlib
import importlib.util
import json
import socket
import struct
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("run_api", ROOT / "workflows" / "run_api.py")
run_api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_api)

PROMPT_ID = "4f1c2d9e-0000-4000-8000-000000000001"
VIDEO_BYTES = b"\x00\x00\x00\x18ftypmp42 fake mp4 payload"

WORKFLOW = {
    "1": {"class_type": "LoadVideo", "inputs": {"file": "placeholder.mp4"}},
    "2": {"class_type": "LatentSyncLoadAudio", "inputs": {"audio": "placeholder.wav"}},
    "3": {"class_type": "LatentSyncSampler", "inputs": {"seed": 1247, "steps": 20}},
    "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "video/LatentSync"}},
}


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


class StandIn:
    """State and script of one stand-in server."""

    def __init__(self, mode: str):
        # "success" | "execution_error" | "invalid" | "no_ws" | "ws_drop" | "hang" (runs forever) |
        # "pending" (queued behind another job, never starts)
        self.mode = mode
        self.uploads: dict[str, bytes] = {}
        self.prompts: list[dict] = []
        self.queued = threading.Event()
        self.released = threading.Event()  # ends a "hang" websocket
        self.ws_messages_sent = 0
        self.interrupts: list = []  # bodies of POST /interrupt
        self.queue_posts: list = []  # bodies of POST /queue
        self.object_info_requests: list[str] = []

    def queue(self):
        """GET /queue as ComfyUI answers it: [number, prompt_id, prompt, extra_data, outputs] items."""
        item = [0, PROMPT_ID, {}, {}, ["4"]]
        busy = [1, "someone-else", {}, {}, ["9"]]
        if not self.prompts or (self.mode == "pending" and any(PROMPT_ID in b.get("delete", []) for b in self.queue_posts)):
            return {"queue_running": [], "queue_pending": []}
        if self.mode == "pending":
            return {"queue_running": [busy], "queue_pending": [item]}
        if self.mode == "hang" and not self.interrupts:
            return {"queue_running": [item], "queue_pending": []}
        return {"queue_running": [], "queue_pending": []}

    def ws_script(self):
        yield _frame(
            0x1, json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}).encode()
        )
        if not self.queued.wait(5):
            return
        msg = lambda t, d: _frame(0x1, json.dumps({"type": t, "data": {**d, "prompt_id": PROMPT_ID}}).encode())  # noqa: E731
        if self.mode == "pending":
            self.released.wait(15)
            return
        yield msg("execution_start", {"timestamp": 0})
        yield msg("executing", {"node": "3", "display_node": "3"})
        if self.mode == "ws_drop":
            return
        if self.mode == "hang":
            self.released.wait(15)
            return
        yield _frame(0x9, b"ping")
        yield _frame(0x2, b"\x00\x00\x00\x01" + b"\xff\xd8 jpeg preview")
        big = {"value": 1, "max": 2, "node": "3", "pad": "x" * 70000}  # 64-bit length frame
        yield msg("progress", big)
        # a message of another client's prompt must be ignored
        yield _frame(0x1, json.dumps({"type": "execution_error", "data": {"prompt_id": "other"}}).encode())
        if self.mode == "execution_error":
            yield msg("execution_error", self.error_data())
        else:
            yield msg("progress", {"value": 2, "max": 2, "node": "3"})
            yield msg("executing", {"node": None})
            yield msg("execution_success", {"timestamp": 1})

    @staticmethod
    def error_data():
        return {
            "node_id": "3",
            "node_type": "LatentSyncSampler",
            "executed": ["1", "2"],
            "exception_message": "No face found in any frame: use a clip where the face is visible.",
            "exception_type": "latentsync_core.errors.FaceError",
            "traceback": [],
            "current_inputs": {},
            "current_outputs": [],
        }

    def history(self):
        if not self.prompts or self.mode in ("hang", "pending"):
            return {}
        if self.mode == "execution_error":
            status = {
                "status_str": "error",
                "completed": False,
                "messages": [["execution_error", {**self.error_data(), "prompt_id": PROMPT_ID}]],
            }
            return {PROMPT_ID: {"prompt": [], "outputs": {}, "status": status}}
        outputs = {
            "4": {
                "images": [{"filename": "LatentSync_00001_.mp4", "subfolder": "video", "type": "output"}],
                "animated": [True],
            },
            "9": {"images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}]},
        }
        return {
            PROMPT_ID: {
                "prompt": [],
                "outputs": outputs,
                "status": {"status_str": "success", "completed": True, "messages": []},
            }
        }


def make_handler(state: StandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # bounded: a stuck client cannot hold a thread forever

        def log_message(self, *args):
            pass

        def _json(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/ws":
                if state.mode == "no_ws":
                    return self._json(404, {})
                assert query.get("clientId")
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(hashlib.sha1((key + run_api._WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                for frame in state.ws_script():
                    self.wfile.write(frame)
                    self.wfile.flush()
                    state.ws_messages_sent += 1
                if state.mode == "ws_drop":  # abort the connection (TCP reset) while the prompt still runs
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:  # read what the client still sends (pong, close) until it hangs up: closing a socket
                    # with unread data would reset the connection before the client has read every frame
                    self.connection.settimeout(5)
                    with contextlib.suppress(OSError):
                        while self.connection.recv(4096):
                            pass
                self.close_connection = True
                return None
            if url.path.startswith("/history/"):
                return self._json(200, state.history())
            if url.path == "/queue":
                return self._json(200, state.queue())
            if url.path.startswith("/object_info/"):
                name = urllib.parse.unquote(url.path[len("/object_info/"):])
                state.object_info_requests.append(name)
                if name != "LatentSyncSampler":
                    return self._json(200, {})
                inputs = {"required": {"seed": ["INT", {}], "steps": ["INT", {}], "guidance": ["FLOAT", {}]},
                          "optional": {"deepcache": ["INT", {}]}}  # fmt: skip
                return self._json(200, {name: {"input": inputs, "output": ["IMAGE"]}})
            if url.path == "/view":
                if query == {"filename": "LatentSync_00001_.mp4", "subfolder": "video", "type": "output"}:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(VIDEO_BYTES)))
                    self.end_headers()
                    self.wfile.write(VIDEO_BYTES)
                    return None
                return self._json(404, {})
            return self._json(404, {})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/upload/image":
                msg = email.parser.BytesParser().parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
                )
                fields = {p.get_param("name", header="content-disposition"): p for p in msg.get_payload()}
                assert fields["type"].get_payload() == "input"
                part = fields["image"]
                state.uploads[part.get_filename()] = part.get_payload(decode=True)
                return self._json(200, {"name": part.get_filename(), "subfolder": "", "type": "input"})
            if self.path == "/interrupt":
                state.interrupts.append(json.loads(body or b"{}"))
                state.released.set()
                return self._json(200, {})
            if self.path == "/queue":
                state.queue_posts.append(json.loads(body))
                state.released.set()
                return self._json(200, {})
            if self.path == "/prompt":
                payload = json.loads(body)
                if state.mode == "invalid":
                    return self._json(
                        400,
                        {
                            "error": {
                                "type": "prompt_outputs_failed_validation",
                                "message": "Prompt outputs failed validation",
                                "details": "",
                                "extra_info": {},
                            },
                            "node_errors": {
                                "3": {
                                    "errors": [
                                        {
                                            "type": "value_bigger_than_max",
                                            "message": "Value 500 bigger than max of 100",
                                            "details": "steps",
                                            "extra_info": {},
                                        }
                                    ],
                                    "dependent_outputs": ["4"],
                                    "class_type": "LatentSyncSampler",
                                }
                            },
                        },
                    )
                state.prompts.append(payload)
                state.queued.set()
                return self._json(200, {"prompt_id": PROMPT_ID, "number": 0, "node_errors": {}})
            return self._json(404, {})

    return Handler


@pytest.fixture
def comfy_stand_in():
    servers = []

    def start(mode: str):
        state = StandIn(mode)
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        watchdog = threading.Timer(60, server.shutdown)  # stops itself even if a test hangs
        watchdog.daemon = True
        watchdog.start()
        servers.append((server, watchdog))
        return state, f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server, watchdog in servers:
        watchdog.cancel()
        server.shutdown()
        server.server_close()


@pytest.fixture
def inputs(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    video, audio = tmp_path / "in.mp4", tmp_path / "speech.wav"
    video.write_bytes(b"video-bytes")
    audio.write_bytes(b"RIFF audio-bytes")
    return wf, video, audio, tmp_path / "out"


def _argv(server, wf, video, audio, out, *extra):
    return [
        str(wf),
        "--server",
        server,
        "--video",
        str(video),
        "--audio",
        str(audio),
        "--out-dir",
        str(out),
        "--timeout",
        "20",
        *extra,
    ]


def test_success_uploads_queues_follows_and_downloads(comfy_stand_in, inputs, capsys):
    state, server = comfy_stand_in("success")
    wf, video, audio, out = inputs
    code = run_api.main(
        _argv(server, wf, video, audio, out, "--set", "LatentSyncSampler.seed=7", "--set", '4.filename_prefix="x/y"')
    )
    assert code == 0
    assert state.uploads == {"in.mp4": b"video-bytes", "speech.wav": b"RIFF audio-bytes"}
    sent = state.prompts[0]
    assert sent["client_id"]
    assert sent["prompt"]["1"]["inputs"]["file"] == "in.mp4"
    assert sent["prompt"]["2"]["inputs"]["audio"] == "speech.wav"
    assert sent["prompt"]["3"]["inputs"] == {"seed": 7, "steps": 20}
    assert sent["prompt"]["4"]["inputs"]["filename_prefix"] == "x/y"
    saved = out / "LatentSync_00001_.mp4"
    assert saved.read_bytes() == VIDEO_BYTES
    assert not (out / "preview.png").exists()  # temp previews only with --temp
    captured = capsys.readouterr()
    assert captured.out.strip() == str(saved)
    assert "2/2" in captured.err  # progress followed over the websocket
    assert state.ws_messages_sent >= 9


def test_execution_error_exits_nonzero_with_comfy_message(comfy_stand_in, inputs, capsys):
    _, server = comfy_stand_in("execution_error")
    wf, video, audio, out = inputs
    code = run_api.main(_argv(server, wf, video, audio, out))
    assert code == run_api.EXIT_EXECUTION
    err = capsys.readouterr().err
    assert "node 3 [LatentSyncSampler] failed: FaceError: " in err
    assert "No face found in any frame" in err
    assert not out.exists()


def test_validation_error_from_prompt(comfy_stand_in, inputs, capsys):
    _, server = comfy_stand_in("invalid")
    wf, video, audio, out = inputs
    code = run_api.main(_argv(server, wf, video, audio, out))
    assert code == run_api.EXIT_INVALID
    err = capsys.readouterr().err
    assert "Prompt outputs failed validation" in err
    assert "node 3 [LatentSyncSampler]: Value 500 bigger than max of 100 (steps)" in err


def test_without_websocket_polls_history(comfy_stand_in, inputs, capsys):
    _, server = comfy_stand_in("no_ws")
    wf, video, audio, out = inputs
    assert run_api.main(_argv(server, wf, video, audio, out)) == 0
    assert (out / "LatentSync_00001_.mp4").read_bytes() == VIDEO_BYTES
    assert "polling" in capsys.readouterr().err


def test_websocket_dropped_mid_run_falls_back_to_polling(comfy_stand_in, inputs, capsys):
    """A websocket reset while the prompt runs must not abort the client: the job goes on on the server."""
    _, server = comfy_stand_in("ws_drop")
    wf, video, audio, out = inputs
    assert run_api.main(_argv(server, wf, video, audio, out)) == 0
    assert (out / "LatentSync_00001_.mp4").read_bytes() == VIDEO_BYTES
    err = capsys.readouterr().err
    assert "running node 3" in err and "websocket lost" in err


def test_unreachable_server_and_bad_inputs(inputs, tmp_path, capsys):
    wf, video, audio, out = inputs
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_api.main(_argv(f"127.0.0.1:{port}", wf, video, audio, out)) == run_api.EXIT_UNREACHABLE
    assert "cannot reach ComfyUI" in capsys.readouterr().err

    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    assert run_api.main([str(ui), "--server", f"127.0.0.1:{port}"]) == run_api.EXIT_INVALID
    assert "UI workflow" in capsys.readouterr().err

    with pytest.raises(run_api.ClientError, match="NODE a node id or class type"):
        run_api.apply_overrides(dict(WORKFLOW), ["KSampler.steps=3"])

    no_loader = tmp_path / "noloader.json"
    no_loader.write_text(json.dumps({"1": {"class_type": "SaveVideo", "inputs": {}}}))
    with pytest.raises(run_api.ClientError, match="no video loader"):
        run_api.set_loader(json.loads(no_loader.read_text()), run_api.VIDEO_LOADERS, "a.mp4", "video")


def test_shipped_api_workflows_have_loaders():
    """Every shipped API workflow has exactly the loaders run_api.py fills in."""
    files = sorted((ROOT / "workflows" / "api").glob("*.json"))
    for path in files:
        prompt = run_api.load_workflow(str(path))
        assert any(n["class_type"] in run_api.VIDEO_LOADERS for n in prompt.values()), path.name
        assert any(n["class_type"] in run_api.AUDIO_LOADERS for n in prompt.values()), path.name


# ------------------------------------------------------------------------------------------------ #13
def test_upload_name_is_escaped_in_the_multipart_header(comfy_stand_in, inputs):
    """A quote or line break in the file name must not break (or inject into) the multipart header."""
    state, server = comfy_stand_in("success")
    wf, _, audio, out = inputs
    odd = wf.parent / 'take "2"\r\nX-Injected: yes.mp4'
    odd.write_bytes(b"odd-video")
    assert run_api.main(_argv(server, wf, odd, audio, out)) == 0
    escaped = "take %222%22%0D%0AX-Injected: yes.mp4"
    assert state.uploads[escaped] == b"odd-video"
    assert state.prompts[0]["prompt"]["1"]["inputs"]["file"] == escaped


@pytest.mark.parametrize(
    "override, message",
    [
        ("LatentSyncSampler.stepz=3", "node 3 [LatentSyncSampler] has no input 'stepz'; did you mean 'steps'?"),
        ("3.sed=1", "has no input 'sed'; did you mean 'seed'?"),
        ("KSampler.steps=3", "NODE a node id or class type"),
        ("SaveVideo.prefix=x", "node 4 [SaveVideo] has no input 'prefix'"),
    ],
)
def test_bad_set_is_rejected_before_any_upload(comfy_stand_in, inputs, capsys, override, message):
    state, server = comfy_stand_in("success")
    wf, video, audio, out = inputs
    assert run_api.main(_argv(server, wf, video, audio, out, "--set", "3.seed=5", "--set", override)) == run_api.EXIT_INVALID
    assert message in capsys.readouterr().err
    assert state.uploads == {} and state.prompts == []


def test_set_accepts_an_optional_input_the_graph_leaves_out(comfy_stand_in, inputs):
    """Inputs missing from the API graph (unset optional ones) are looked up in the server's node definition."""
    state, server = comfy_stand_in("success")
    wf, video, audio, out = inputs
    assert run_api.main(_argv(server, wf, video, audio, out, "--set", "LatentSyncSampler.deepcache=3")) == 0
    assert state.prompts[0]["prompt"]["3"]["inputs"]["deepcache"] == 3
    assert state.object_info_requests == ["LatentSyncSampler"]


def test_timeout_interrupts_the_running_job(comfy_stand_in, inputs, capsys):
    state, server = comfy_stand_in("hang")
    wf, video, audio, out = inputs
    argv = _argv(server, wf, video, audio, out)
    argv[argv.index("--timeout") + 1] = "1.5"
    assert run_api.main(argv) == run_api.EXIT_TIMEOUT
    assert state.interrupts == [{"prompt_id": PROMPT_ID}] and state.queue_posts == []
    assert f"interrupted prompt {PROMPT_ID} on the server" in capsys.readouterr().err


def test_timeout_removes_a_pending_job_from_the_queue(comfy_stand_in, inputs, capsys):
    """While our job waits behind another one, the other (running) job must not be interrupted."""
    state, server = comfy_stand_in("pending")
    wf, video, audio, out = inputs
    argv = _argv(server, wf, video, audio, out)
    argv[argv.index("--timeout") + 1] = "1.5"
    assert run_api.main(argv) == run_api.EXIT_TIMEOUT
    assert state.queue_posts == [{"delete": [PROMPT_ID]}] and state.interrupts == []
    assert "removed prompt" in capsys.readouterr().err


def test_ctrl_c_cancels_the_job_on_the_server(comfy_stand_in, inputs, capsys):
    state, server = comfy_stand_in("hang")
    wf, video, audio, out = inputs

    def log(line):  # Ctrl-C arrives while the job runs
        if line.startswith("running node"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_api.run(run_api.parse_args(_argv(server, wf, video, audio, out)), log=log)
    assert state.interrupts == [{"prompt_id": PROMPT_ID}]


def test_batch_over_two_servers_reports_and_resumes(comfy_stand_in, inputs, capsys):
    """--batch: rows spread over two servers, each row's files in its own folder, a missing input reported
    while the others run; a rerun skips everything; a changed per-row setting reruns only that row."""
    state_a, server_a = comfy_stand_in("success")
    state_b, server_b = comfy_stand_in("success")
    wf, video, audio, out = inputs
    folder = wf.parent
    manifest = folder / "rows.csv"

    def write(seed_row2: int) -> None:
        manifest.write_text(
            "video,audio,out,LatentSyncSampler.seed\n"
            f"in.mp4,speech.wav,first,1\nin.mp4,speech.wav,second,{seed_row2}\nnope.mp4,speech.wav,third,3\n"
        )

    write(2)
    argv = [str(wf), "--batch", str(manifest), "--server", server_a, "--server", server_b, "--out-dir", str(out),
            "--timeout", "20"]
    assert run_api.main(argv) == 1  # the missing row failed
    lines = {json.loads(x)["row"]: json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()}
    assert [lines[i]["status"] for i in (1, 2, 3)] == ["done", "done", "failed"]
    assert "no such file" in lines[3]["error"] and "nope.mp4" in lines[3]["error"]
    for name in ("first", "second"):
        assert (out / name / "LatentSync_00001_.mp4").read_bytes() == VIDEO_BYTES
    seeds = sorted(p["prompt"]["3"]["inputs"]["seed"] for p in state_a.prompts + state_b.prompts)
    assert seeds == [1, 2]  # the per-row NODE.INPUT column reached the workflow
    assert "2 done, 0 skipped, 1 failed" in capsys.readouterr().out

    sent = len(state_a.prompts) + len(state_b.prompts)
    assert run_api.main(argv) == 1
    lines = {json.loads(x)["row"]: json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()}
    assert [lines[i]["status"] for i in (1, 2)] == ["skipped", "skipped"]
    assert len(state_a.prompts) + len(state_b.prompts) == sent  # nothing queued again

    write(5)
    assert run_api.main(argv) == 1
    lines = {json.loads(x)["row"]: json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()}
    assert [lines[i]["status"] for i in (1, 2)] == ["skipped", "done"]


def test_batch_manifest_errors(inputs, capsys):
    wf, _, _, out = inputs
    bad = wf.parent / "bad.csv"
    bad.write_text("video,audio,colour\nin.mp4,speech.wav,red\n")
    assert run_api.main([str(wf), "--batch", str(bad), "--out-dir", str(out)]) == run_api.EXIT_INVALID
    assert "unknown column(s) colour" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run_api.main([str(wf), "--server", "a:1", "--server", "b:2"])
    assert exit_.value.code == 2 and "several --server URLs need --batch" in capsys.readouterr().err
