"""Every user option of the pack, once: type, default, range or choices, tooltip and UI encodings.

One :class:`Option` per setting a person can change. The ComfyUI node inputs (:meth:`Option.input`), the
command-line flags and their help (:meth:`Option.add_flag`) and the streaming job's settings
(:class:`StreamSettings`) are generated from this table; a value from a widget or a flag is decoded and
checked by its option (:meth:`Option.from_widget`, :meth:`Option.from_flag`, :meth:`Option.check`), so a
bad value is refused with one line, before any model loads or any frame is decoded.

The option groups (:data:`FACE`, :data:`SAMPLING`, :data:`PASTE`, :data:`AUDIO`, :data:`OUTPUT`,
:data:`MODEL`) are frozen dataclasses made from the table (:class:`FaceOptions`, :class:`SamplingOptions`,
...): constructing one validates every field. The defaults are the official LatentSync 1.5 behaviour.

This module sits at the bottom of the core: it imports only constants and errors.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from .constants import (
    CHUNK_FRAMES,
    DEFAULT_GUIDANCE,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    MAX_FACE_GAP,
    RESOLUTION,
    SUPPORTED_RESOLUTIONS,
)
from .errors import LatentSyncError

_UNSET = object()


class OptionError(LatentSyncError, ValueError):
    """A value an option does not accept; ``option`` is the :class:`Option`, ``value`` what was given."""

    def __init__(self, option: Option, value: Any, rule: str):
        self.option, self.value, self.rule = option, value, rule
        super().__init__(f"{option.name} = {value!r}: {rule}")

    def for_flag(self, raw: Any = _UNSET) -> str:
        """The same error in command-line words: ``--steps 1001: use 1 to 1000 (default 20).``"""
        shown = self.value if raw is _UNSET else raw
        return f"{self.option.flag} {shown}: {self.rule}"


@dataclass(frozen=True)
class Option:
    """One user option.

    name:     the core's keyword (function argument, :class:`StreamSettings` field, batch-manifest column).
    kind:     ``int``, ``float``, ``str`` or ``bool``: the type of the core value.
    default:  the core value when the option is not given (the official behaviour).
    tooltip:  the node tooltip; also the command-line help unless ``help`` is given.
    minimum / maximum / step: range of a number (inclusive) and the widget's step.
    choices:  the core values allowed (combo widgets and ``choices=`` flags).
    labels:   widget label -> core value, where the widget shows words (``"off"`` -> 0).
    flag_labels: command-line word -> core value, where it differs from ``labels``.
    unset:    ``(code, core value)``: a number that widgets and flags use for a non-number core value
              (``feather`` -1 = None, the official blur; ``chunk_batch`` 0 = ``"auto"``).
    flag:     the command-line flag (``--name`` by default); ``""`` = not on the command line.
    widget:   the node input's name (``name`` by default); ``""`` = no node shows it.
    help:     command-line help when it should differ from the tooltip.
    accepts:  the allowed values in words, where the generated rule would read worse.
    """

    name: str
    kind: type
    default: Any
    tooltip: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple | None = None
    labels: Mapping[str, Any] | None = None
    flag_labels: Mapping[str, Any] | None = None
    unset: tuple[Any, Any] | None = None
    flag: str | None = None
    widget: str | None = None
    help: str | None = None
    accepts: str | None = None

    def __post_init__(self):
        if self.flag is None:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))
        if self.widget is None:
            object.__setattr__(self, "widget", self.name)
        self.check(self.default)  # a table entry whose default breaks its own rule is a bug

    # -- the rule -------------------------------------------------------------------------------------
    def rule(self, value: Any = _UNSET) -> str:
        """What the option accepts, in words (ends the error messages); for a number out of range, said
        from the side it left (``use 1 or more`` for 0 steps, ``use 0-51`` for a crf of 99)."""
        default = f"(default {self.encode(self.default)})"
        if self.accepts:
            return f"use {self.accepts} {default}."
        if self.labels or self.choices:
            shown = list(self.labels) if self.labels else [str(c) for c in self.choices]
            return f"use one of {', '.join(shown)} {default}."
        low, high = self.minimum, self.maximum
        if self.unset is not None and self.unset[0] is not None:
            low = min(low, self.unset[0]) if low is not None else self.unset[0]
        notes = [f"{self.unset[0]} = {self.unset[1] if self.unset[1] is not None else 'official'}"] if self.unset else []
        below = value is not _UNSET and isinstance(value, (int, float)) and low is not None and value < low
        if high is None or below:
            span = f"{_num(low)} or more"
            notes = ([f"at most {_num(high)}"] if high is not None else []) + notes
        else:
            span = f"{_num(low)}-{_num(high)}" if low >= 0 else f"{_num(low)} to {_num(high)}"
        return f"use {span} ({'; '.join([*notes, default[1:-1]])})."

    def check(self, value: Any) -> Any:
        """The core value ``value`` if the option accepts it (numbers converted to ``kind``), else
        :class:`OptionError` saying what to use."""
        if self.unset is not None and not isinstance(value, bool) and (
                value is self.unset[1] or value == self.unset[1] or value == self.unset[0]):  # fmt: skip
            return self.unset[1]  # the code (-1, 0) means the same everywhere
        if self.choices is not None:
            if value in self.choices and (type(value) is bool) == (self.kind is bool):
                return value
            raise OptionError(self, value, self.rule())
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise OptionError(self, value, "use true or false.")
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(self, value, self.rule())
            if self.kind is int and value != int(value):
                raise OptionError(self, value, "use a whole number. " + self.rule())
            number = self.kind(value)
            if not math.isfinite(number) or (self.minimum is not None and number < self.minimum) or (
                    self.maximum is not None and number > self.maximum):  # fmt: skip
                raise OptionError(self, value, self.rule(number))
            return number
        if not isinstance(value, str):
            raise OptionError(self, value, self.rule())
        return value

    # -- encodings ------------------------------------------------------------------------------------
    def encode(self, value: Any) -> Any:
        """Core value -> what a widget or a flag shows (label, or the ``unset`` code)."""
        if self.unset is not None and value == self.unset[1]:
            return self.unset[0]
        if self.labels:
            for label, core in self.labels.items():
                if core == value and type(core) is type(value):
                    return label
        return value

    def from_widget(self, value: Any) -> Any:
        """A node widget's value -> the checked core value."""
        if self.labels is not None:
            if value not in self.labels:
                raise OptionError(self, value, self.rule())
            return self.check(self.labels[value])
        return self.check(value)

    def from_flag(self, value: Any) -> Any:
        """A parsed command-line value -> the checked core value (raises :class:`OptionError`)."""
        labels = self._flag_labels()
        if labels and isinstance(value, str) and self.kind is not str:
            if value not in labels:
                raise OptionError(self, value, self.rule())
            return self.check(labels[value])
        return self.check(value)

    def from_text(self, text: str) -> Any:
        """A value written as on the command line (a manifest cell, an environment variable) -> the checked
        core value: the flag's labels, else the option's type (raises :class:`OptionError`)."""
        text = text.strip()
        if (self._flag_labels() and self.kind is not str) or self.kind is str:
            return self.from_flag(text)
        try:
            value = self.kind(text) if self.kind is not bool else {"true": True, "false": False}[text.lower()]
        except (ValueError, KeyError):
            raise OptionError(self, text, self.rule()) from None
        return self.from_flag(value)

    # -- generated interfaces ---------------------------------------------------------------------------
    def input(self, **overrides) -> tuple:
        """The ComfyUI input spec: ``("INT", {...})``, ``("FLOAT", {...})`` or ``([labels], {...})``."""
        extra: dict[str, Any] = {"default": self.encode(self.default)}
        if self.labels is not None or (self.choices is not None and self.step is None):
            kind: Any = list(self.labels) if self.labels is not None else list(self.choices)
        else:  # a number (also a number with few allowed values and a step: resolution 256 / 512)
            kind = {int: "INT", float: "FLOAT", str: "STRING"}[self.kind]
            low = self.minimum
            if self.unset is not None:
                low = self.unset[0] if low is None else min(low, self.unset[0])
            extra.update({k: v for k, v in (("min", low), ("max", self.maximum), ("step", self.step)) if v is not None})
        extra["tooltip"] = self.tooltip
        extra.update(overrides)
        return (kind, extra)

    def add_flag(self, parser: argparse._ActionsContainer) -> None:
        """Add ``--flag`` to an argparse parser (dest = ``name``); values are decoded by :meth:`from_flag`."""
        if not self.flag:
            return
        text = self.help or self.tooltip
        labels = self._flag_labels()
        if self.kind is bool and not labels:
            parser.add_argument(self.flag, dest=self.name, action="store_true", help=text)
            return
        kwargs: dict[str, Any] = {"dest": self.name, "default": self._flag_default(labels), "help": text}
        if labels and self.kind is not str:  # words decoded by from_flag, so a wrong one gets the option's rule
            kwargs["metavar"] = "{" + ",".join(labels) + "}"
        elif self.choices is not None:
            kwargs["choices"] = list(self.choices)
            kwargs["type"] = self.kind
        else:
            kwargs["type"] = self.kind
        kwargs["help"] = f"{text} (default: {kwargs['default']})"
        parser.add_argument(self.flag, **kwargs)

    def _flag_labels(self) -> Mapping[str, Any] | None:
        """Command-line word -> core value (``flag_labels``, else ``labels``); empty or None: plain values."""
        return self.flag_labels if self.flag_labels is not None else self.labels

    def _flag_default(self, labels) -> Any:
        if labels and self.kind is not str:
            return next(label for label, core in labels.items() if core == self.default)
        return self.encode(self.default)


def _num(x) -> str:
    return str(x)  # 1.0 stays "1.0": a float option says it takes fractions


# ================================================================================================
# The table. Grouped by what the option shapes; each group becomes a frozen, self-checking dataclass.
# ================================================================================================
DEEPCACHE_INTERVALS = (2, 3, 4, 5)  # the official script's --enable_deepcache uses 3
MAX_CHUNK_BATCH = 16  # most 16-frame chunks in one U-Net call, given or picked by "auto"
MAX_STEPS = 1000  # the DDIM schedule has 1000 training timesteps: more steps do not exist
SAMPLERS = ("ddim", "dpmpp_2m")  # first: the official sampler
AUDIO_MODES = ("seamless", "official")
BLEND_MODES = ("face", "mouth")
PASTE_METHODS = ("auto", "reference", "fast")
VAE_ENCODE_MODES = ("auto", "sample", "mean")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
VERSIONS = {"1.5": 256, "1.6": 512}  # LatentSync release -> face size of its U-Net
MAX_CRF = 51  # libx264's quality scale is 0..51
DEFAULT_CRF = 18  # visually lossless; lower is larger
SILENCE_DB = -40.0
SILENCE_MS = 300

FACE = (
    Option("face", str, "largest",
           "Which face to use when there are several: 'largest', or its index counting from the left (0 = "
           "leftmost).", help="which face: 'largest' or its index from the left (0-based)",
           accepts="largest or a face index from the left (0, 1, ...)"),
    Option("max_gap", int, MAX_FACE_GAP,
           "Runs of up to this many frames without a detected face are filled in from the neighbouring frames; "
           "longer runs are left untouched.", minimum=0, maximum=1000, widget="max_gap_frames"),
    Option("resolution", int, RESOLUTION,
           "Aligned face size: 256 for LatentSync 1.5, 512 for LatentSync 1.6 (must match the model).",
           choices=SUPPORTED_RESOLUTIONS, minimum=min(SUPPORTED_RESOLUTIONS), maximum=max(SUPPORTED_RESOLUTIONS),
           step=256, flag=""),
)

SAMPLING = (
    Option("seed", int, DEFAULT_SEED, "Noise seed: the same seed gives the same frames.",
           minimum=0, maximum=0xFFFFFFFFFFFFFFFF),
    Option("steps", int, DEFAULT_STEPS,
           "Sampler steps per 16-frame chunk (official: 20 DDIM steps; dpmpp_2m: try 10).",
           minimum=1, maximum=MAX_STEPS),
    Option("guidance", float, DEFAULT_GUIDANCE,
           "Audio guidance scale (official: 1.5; 1.0 = no unconditional pass, faster, weaker lip sync).",
           minimum=1.0, maximum=10.0, step=0.1),
    Option("deepcache", int, 0,
           "DeepCache: run the full U-Net only every n-th step and reuse its deep features in between (faster, "
           "slightly different; the official --enable_deepcache uses 3).",
           choices=(0, 1, *DEEPCACHE_INTERVALS), labels={"off": 0, **{str(i): i for i in DEEPCACHE_INTERVALS}},
           flag_labels={"0": 0, **{str(i): i for i in DEEPCACHE_INTERVALS}},
           accepts=f"0 (off) or an interval {DEEPCACHE_INTERVALS[0]}-{DEEPCACHE_INTERVALS[-1]}",
           help=f"DeepCache interval {DEEPCACHE_INTERVALS[0]}-{DEEPCACHE_INTERVALS[-1]} (faster, slightly softer); "
                "0: off"),
    Option("chunk_batch", int, "auto",
           "16-frame chunks denoised together in one U-Net call (same result, faster on a GPU, more memory). "
           "0 = auto: from the free GPU memory (1 on the CPU).",
           minimum=1, maximum=MAX_CHUNK_BATCH, unset=(0, "auto")),
    Option("sampler", str, SAMPLERS[0],
           "ddim: the official sampler. dpmpp_2m: DPM-Solver++ 2M, about as good in half the steps (try 10) but "
           "NOT the official result.", choices=SAMPLERS),
    Option("vae_encode", str, "auto",
           "How faces are encoded: auto = the VAE posterior sampled with the run's generator where the VAE "
           "allows it (official; ComfyUI's VAE gives only the mean), sample, or mean.",
           choices=VAE_ENCODE_MODES, flag="", widget=""),
)

PASTE = (
    Option("blend", str, BLEND_MODES[0],
           "face: the official blend of the whole aligned crop (soft crop edge). mouth: only the regenerated "
           "mouth region is blended, with its own soft edge; every other pixel, the rest of the face included, "
           "stays exactly the input (no blur of eyes and skin, no box edge).", choices=BLEND_MODES),
    Option("mask_grow", int, 0,
           "Pixels (in the frame) to grow (+) or shrink (-) the blend region before the soft edge. In face mode "
           "the crop edge is the limit, so only shrinking changes anything.", minimum=-64, maximum=64, step=1),
    Option("feather", int, None,
           "Width of the soft edge in frame pixels; -1 = official (crop size / 20). 0 = hard edge.",
           minimum=0, maximum=128, step=1, unset=(-1, None)),
    Option("paste", str, "auto",
           "reference: OpenCV exactly as the official code (CPU); fast: batched torch/kornia on the GPU "
           "(bilinear, within 1 grey level); auto: fast on a GPU, reference on CPU.",
           choices=PASTE_METHODS,
           labels={"auto": "auto", "reference (OpenCV)": "reference", "fast (torch/kornia)": "fast"},
           flag_labels={m: m for m in PASTE_METHODS}, widget="method"),
)

AUDIO = (
    Option("audio_mode", str, AUDIO_MODES[0],
           "seamless: no glitch every 30 s on long clips (identical to official up to 30 s); official: "
           "independent 30 s windows, as the reference code.", choices=AUDIO_MODES),
    Option("silence", bool, False,
           "sync: the official behaviour, every frame is regenerated. keep original: frames whose audio window "
           "is silent are not sent through the model and come back as the input face (closed-mouth pauses stay "
           "closed).", labels={"sync": False, "keep original": True}, flag_labels={"sync": False, "keep": True},
           help="sync: every frame is regenerated (official); keep: frames in silent pauses stay the input"),
    Option("silence_db", float, SILENCE_DB,
           "keep original: audio quieter than this (RMS, dBFS) counts as silence.",
           minimum=-100.0, maximum=-10.0, step=1.0, widget="silence_threshold_db"),
    Option("silence_ms", int, SILENCE_MS,
           "keep original: only pauses at least this long (ms) count, so short gaps between words are still "
           "lip-synced.", minimum=0, maximum=5000, step=20, widget="silence_min_ms"),
)

OUTPUT = (
    Option("crf", int, DEFAULT_CRF,
           f"x264 quality 0-{MAX_CRF} (lower = better and larger; 18 visually lossless).",
           minimum=0, maximum=MAX_CRF, widget=""),
)

MODEL = (
    Option("version", str, "1.5", "LatentSync model version: 1.5 (256 px faces) or 1.6 (512 px).",
           choices=tuple(VERSIONS), widget=""),
    Option("dtype", str, "auto",
           "Weight precision. auto: bf16 on GPUs that support it, else fp16; fp32 on the CPU.", choices=PRECISIONS),
    Option("compile", bool, False,
           "torch.compile the U-Net: the same model, faster sampling after a one-time compile of a minute or "
           "more (needs a working Triton/C++ compiler; DeepCache and the short last chunk run uncompiled). Not "
           "bit-exact: compiled kernels round differently from eager ones.",
           labels={"off": False, "torch.compile": True}, flag_labels={}, help="torch.compile the U-Net "
           "(faster after a one-time compile; not bit-exact)"),
    Option("lora", str, "", "A LoRA file (.safetensors from `train --preset lora`) merged into the U-Net; empty = "
           "none. A LoRA trained for another face size is refused.", widget="",
           help="a LoRA .safetensors (from train --preset lora) merged into the U-Net"),
    Option("lora_strength", float, 1.0, "How strongly the LoRA is applied (1 = as trained, 0 = not at all).",
           minimum=0.0, maximum=2.0, step=0.05),
)

SCORE_CROPS = ("auto", "s3fd", "landmarks")
SCORERS = ("lse", "fast")
SCORE = (  # the sync score (``score`` command, LatentSync Sync Score node)
    Option("scorer", str, SCORERS[0],
           "lse: LSE-C / LSE-D / offset with joonson's SyncNet, as papers report them. fast: LatentSync's own "
           "StableSyncNet cosine similarity per 16-frame window of the aligned faces (needs stable_syncnet.pt, "
           "1.6 GB; a different number, NOT LSE).", choices=SCORERS, widget="",
           help="lse: LSE-C/LSE-D/offset as papers (syncnet_v2); fast: StableSyncNet cosine similarity, NOT LSE"),
    Option("crops", str, SCORE_CROPS[0],
           "How the face crops are found. s3fd: as the official evaluation (S3FD detector and its face tracks; "
           "downloads auxiliary/sfd_face.pth, 86 MB): the numbers compare with papers. landmarks: the pack's own "
           "face track (no extra download; numbers compare only with each other). auto: s3fd when "
           "sfd_face.pth is already there, else landmarks.", choices=SCORE_CROPS,
           help="face crops: s3fd (official, comparable with papers), landmarks (the pack's face track), auto: "
                "s3fd when its weights are present"),
)

PREPARE = (  # training data (``prepare`` command)
    Option("max_seconds", float, 10.0,
           "Longest training segment in seconds (the official pipeline cuts clips into 5-10 s segments).",
           minimum=2.0, maximum=60.0, step=0.5, widget=""),  # no node prepares data yet
    Option("min_seconds", float, 5.0,
           "A clip's last piece shorter than this joins the segment before it (pieces under 48 frames are "
           "never kept).", minimum=1.92, maximum=30.0, step=0.5, widget=""),
    Option("scene_threshold", float, 2.0,
           "Scene-cut sensitivity: PySceneDetect's adaptive detector threshold (the official pipeline's "
           "`detect-adaptive --threshold 2`; lower finds more cuts); segments never cross a cut. 0 = no scene "
           "detection.", minimum=0.0, maximum=255.0, step=0.5, widget=""),
    Option("min_face", int, 0,
           "Drop a segment whose median face size (the larger side of the box around the 68 landmarks, in "
           "source pixels) is under this; 0 = keep every size (the official high-resolution filter is "
           "switched off in its pipeline too).", minimum=0, maximum=4096, widget=""),
    Option("sync_filter", bool, False,
           "Score each segment's lip sync (syncnet_v2.model, LSE-C and offset on the landmark crops), keep "
           "only LSE-C >= 3 with |offset| <= 6 frames, and shift its audio by the offset (the official "
           "sync_av step).", widget=""),
)

TRAIN_PRESETS = ("lora", "stage2_efficient", "stage2")
TRAIN = (  # fine-tuning (``train`` command); a None weight keeps the preset's
    Option("train_preset", str, TRAIN_PRESETS[0],
           "lora: LoRA adapters (rank --rank) on the attention layers, stage2_efficient's losses (no TREPA); "
           "stage2_efficient / stage2: the official trainable sets and losses.", choices=TRAIN_PRESETS, flag="--preset",
           widget=""),
    Option("train_steps", int, 1000, "Training steps (the run's total; a resumed run goes on to it).",
           minimum=1, maximum=10_000_000, flag="--steps"),
    Option("learning_rate", float, 1e-4, "AdamW learning rate (official full fine-tuning: 1e-5; LoRA: 1e-4).",
           minimum=1e-8, maximum=1.0, step=1e-6, flag="--lr"),
    Option("train_batch_size", int, 1, "Samples per step (16-frame windows); official: 4 per GPU.",
           minimum=1, maximum=64, flag="--batch-size"),
    Option("lora_rank", int, 16, "LoRA rank (preset lora): adapter size; more learns more and needs more data.",
           minimum=1, maximum=256, flag="--rank"),
    Option("save_every", int, 500, "Save a checkpoint (and the LoRA file) every N steps, and at the end.",
           minimum=1, maximum=10_000_000),
    Option("train_seed", int, 1247, "Seed of the data draws and of the step's noise (the official 1247).",
           minimum=0, maximum=2**31 - 1, flag="--seed"),
    Option("precision", str, "auto", "fp32; bf16 / fp16 mixed precision (fp32 trainable weights); auto: bf16 on "
           "GPUs that support it, fp32 on the CPU.", choices=PRECISIONS, widget=""),
    Option("sync_weight", float, None, "SyncNet loss weight (0 = no SyncNet; -1 = the preset's, 0.05).",
           minimum=0.0, maximum=100.0, step=0.01, unset=(-1.0, None)),
    Option("lpips_weight", float, None, "LPIPS loss weight (0 = no VGG16; -1 = the preset's, 0.1).",
           minimum=0.0, maximum=100.0, step=0.01, unset=(-1.0, None)),
    Option("trepa_weight", float, None, "TREPA loss weight (0 = no VideoMAE; -1 = the preset's).",
           minimum=0.0, maximum=100.0, step=0.01, unset=(-1.0, None)),
    Option("validate_every", int, 0, "Every N steps (and at step 0 and the end) lip-sync a held-out segment "
           "(the dataset's last, kept out of training when there are two or more) with the current weights: RUN_DIR/validation/step_*.mp4 "
           "(generated | ground truth) and validation.jsonl (SyncNet score when the run has one); 0 = off.",
           minimum=0, maximum=10_000_000, widget=""),
    Option("validate_frames", int, 32, "Frames of the held-out segment each validation renders (whole "
           "16-frame chunks; at most the segment's).", minimum=16, maximum=4000, step=16, widget=""),
)

GROUPS = {"face": FACE, "sampling": SAMPLING, "paste": PASTE, "audio": AUDIO, "output": OUTPUT, "model": MODEL,
          "score": SCORE, "prepare": PREPARE, "train": TRAIN}
OPTIONS: dict[str, Option] = {o.name: o for group in GROUPS.values() for o in group}
assert len(OPTIONS) == sum(len(g) for g in GROUPS.values()), "an option name is used twice"


def option(name: str) -> Option:
    """The option called ``name`` (KeyError names the known ones)."""
    try:
        return OPTIONS[name]
    except KeyError:
        raise KeyError(f"no option {name!r}; known: {', '.join(OPTIONS)}") from None


def defaults(names: Iterable[str] | None = None) -> dict[str, Any]:
    """Core defaults of the named options (all by default)."""
    return {n: OPTIONS[n].default for n in (OPTIONS if names is None else names)}


def check_face(value: Any) -> str | int:
    """``"largest"`` or a face index >= 0 (a digit string from the command line is accepted)."""
    if value == "largest":
        return value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise OptionError(OPTIONS["face"], value, "use 'largest' or a face index from the left (0, 1, ...).")  # cf. accepts


FACE_WIDGET_CHOICES = ("largest", "index from left")
MAX_FACE_INDEX = 63


def face_inputs() -> dict[str, tuple]:
    """The two widgets that pick the face in a node: ``face`` (largest / index from left) + ``face_index``."""
    return {
        "face": (list(FACE_WIDGET_CHOICES), {"default": "largest", "tooltip": "Which face to use when there are "
                                             "several: the largest, or the one at face_index counting from the left."}),
        "face_index": ("INT", {"default": 0, "min": 0, "max": MAX_FACE_INDEX,
                               "tooltip": "With 'index from left': 0 = leftmost face, 1 = the next one, ..."}),
    }


def face_from_widgets(face: str, face_index: int) -> str | int:
    """The core face selection from the two node widgets."""
    if face not in FACE_WIDGET_CHOICES:
        raise OptionError(OPTIONS["face"], face, f"use one of {', '.join(FACE_WIDGET_CHOICES)}.")
    return "largest" if face == "largest" else check_face(int(face_index))


def _checked_fields(self) -> None:
    for f in fields(self):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        value = getattr(self, f.name)
        checked = check_face(value) if spec.name == "face" else spec.check(value)
        if checked is not value:
            object.__setattr__(self, f.name, checked)
    extra = getattr(self, "_check_extra", None)
    if extra is not None:
        extra()


def option_field(spec: Option):
    """A dataclass field for ``spec``: its default, and the option in the field's metadata."""
    return field(default=spec.default, metadata={"option": spec})


def option_group(name: str, specs: Iterable[Option], extra: Iterable[tuple] = (), namespace: dict | None = None,
                 doc: str = ""):
    """A frozen dataclass with one field per option (plus ``extra`` fields), validated on construction."""
    cls = make_dataclass(
        name,
        [(s.name, Any, option_field(s)) for s in specs] + list(extra),
        frozen=True,
        namespace={"__post_init__": _checked_fields, "__doc__": doc, **(namespace or {})},
    )
    cls.__module__ = __name__  # picklable (Ray, process pools): found again as latentsync_core.options.<name>
    return cls


def group_options(cls) -> dict[str, Option]:
    """The options of an option-group dataclass, by name."""
    return {f.name: f.metadata["option"] for f in fields(cls) if "option" in f.metadata}


FaceOptions = option_group("FaceOptions", FACE, doc="Which face, and how gaps are bridged.")
SamplingOptions = option_group("SamplingOptions", SAMPLING, doc="The sampler's options (seed, steps, ...).")
PasteOptions = option_group("PasteOptions", PASTE, doc="How generated faces are blended back.")
AudioOptions = option_group("AudioOptions", AUDIO, doc="Whisper windowing and silence handling.")
OutputOptions = option_group("OutputOptions", OUTPUT, doc="The encoded output file.")
ModelOptions = option_group("ModelOptions", MODEL, doc="Which model and at which precision.")
ScoreOptions = option_group("ScoreOptions", SCORE, doc="How the sync score finds its face crops.")
PrepareOptions = option_group("PrepareOptions", PREPARE, doc="How clips are cut into training segments.")
TrainOptions = option_group("TrainOptions", TRAIN, doc="A fine-tuning run.")

# settings of the streaming job that are plumbing, not user options (no widget, no flag)
SEGMENT_FRAMES = 4 * CHUNK_FRAMES  # frames with a face sampled per segment (bounded host memory)


def _check_stream(self) -> None:
    if self.segment_frames < CHUNK_FRAMES or self.segment_frames % CHUNK_FRAMES:
        raise ValueError(f"segment_frames must be a positive multiple of {CHUNK_FRAMES}, got {self.segment_frames}")


def _group(self, cls):
    """This job's options of one group (e.g. ``settings.group(SamplingOptions)``)."""
    return cls(**{name: getattr(self, name) for name in group_options(cls)})


STREAM_GROUPS = (FaceOptions, AudioOptions, SamplingOptions, PasteOptions, OutputOptions)
StreamSettings = option_group(
    "StreamSettings",
    [s for g in STREAM_GROUPS for s in group_options(g).values() if s.name != "resolution"],
    extra=[("segment_frames", int, field(default=SEGMENT_FRAMES)), ("overlap", Any, field(default=None))],
    namespace={"_check_extra": _check_stream, "group": _group},
    doc="""The streaming job's settings: every face, audio, sampling, paste and output option (defaults: the
    official behaviour; each is checked on construction), plus

    segment_frames: frames with a face sampled per segment (a multiple of 16; bounds host memory).
    overlap: decode/align the next segment and paste/encode the previous one on helper threads while a
    segment is sampled (same output); None = when the U-Net is not on the CPU.""",
)


def settings_from_flags(args: argparse.Namespace, cls=StreamSettings):
    """``cls`` built from parsed command-line flags (each decoded and checked; errors name the flag)."""
    values = {}
    for name, spec in group_options(cls).items():
        if not hasattr(args, name):
            continue
        raw = getattr(args, name)
        try:
            values[name] = check_face(raw) if name == "face" else spec.from_flag(raw)
        except OptionError as exc:
            raise OptionError(spec, exc.value, exc.rule) from None
    return cls(**values)


def add_flags(parser: argparse._ActionsContainer, specs: Iterable[Option]) -> None:
    """Add the command-line flags of ``specs`` (options without a flag are skipped)."""
    for spec in specs:
        if spec.name == "face":
            parser.add_argument(spec.flag, dest="face", default="largest", help=f"{spec.help} (default: largest)")
        else:
            spec.add_flag(parser)


def node_inputs(*names: str) -> dict[str, tuple]:
    """ComfyUI input specs of the named options, keyed by their widget names (``face``: two widgets)."""
    specs: dict[str, tuple] = {}
    for name in names:
        if name == "face":
            specs.update(face_inputs())
        else:
            specs[OPTIONS[name].widget] = OPTIONS[name].input()
    return specs


def from_widgets(widgets: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Core values of the named options from a node's widget values (keyed by widget name); an absent
    widget or None (an old saved workflow, a call from Python) takes the option's default."""
    widgets = {k: v for k, v in widgets.items() if v is not None}
    values: dict[str, Any] = {}
    for name in names:
        if name == "face":
            values[name] = face_from_widgets(widgets.get("face", "largest"), widgets.get("face_index", 0))
            continue
        spec = OPTIONS[name]
        values[name] = spec.from_widget(widgets[spec.widget]) if spec.widget in widgets else spec.default
    return values


def unknown_fields(cls, names: Iterable[str]) -> list[str]:
    """The names that are not fields of ``cls`` (for manifests and keyword overrides)."""
    known = {f.name for f in fields(cls)}
    return [n for n in names if n not in known]


__all__ = [
    "AUDIO", "FACE", "GROUPS", "MODEL", "OPTIONS", "OUTPUT", "PASTE", "SAMPLING", "AudioOptions", "FaceOptions",
    "ModelOptions", "Option", "OptionError", "OutputOptions", "PasteOptions", "SamplingOptions", "PREPARE", "PrepareOptions", "TRAIN", "TrainOptions", "SCORE", "ScoreOptions", "StreamSettings",
    "add_flags", "check_face", "defaults", "face_from_widgets", "face_inputs", "from_widgets", "group_options",
    "node_inputs", "option",
    "option_field", "option_group", "settings_from_flags", "MISSING",
]
