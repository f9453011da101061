"""DeepCache for the LatentSync U-Net, as the official ``--enable_deepcache`` uses it.

The official script wraps the U-Net with ``DeepCache.DeepCacheSDHelper`` (``cache_interval=3``,
``cache_branch_id=0``). Its rule, reproduced here for our module tree: at every step whose index in the
schedule is a multiple of the interval the U-Net runs in full and each block's output is stored; at the
other steps every block deeper than the shallowest skip branch (all down blocks, the mid block, all up
blocks but the last, and all but the last layer of the last up block) returns its stored output, so
only ``conv_in``, the last up-block layer and ``conv_out`` are computed. Each chunk starts at step 0, a
full pass, so no cache crosses chunks. Interval 1 (or 0) is off.

Unlike DeepCache's helper, the motion modules of a skipped layer are cached too: in the last up block
the helper skips the ResNets and transformers of the first two layers but runs their motion modules
again on the (cached) transformer outputs, which recomputes exactly the cached result (36 % of a cached
step's FLOP at 256 px). Returning the stored output instead gives the same tensors without that work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn

from .options import DEEPCACHE_INTERVALS  # noqa: F401  (re-exported: the intervals live in the option table)


class DeepCache:
    """Patches block ``forward`` methods of ``unet`` while active (``with cache.active(): ...``).

    Set :attr:`step` (index into the scheduler's timesteps) before each U-Net call.
    """

    def __init__(self, unet: nn.Module, interval: int, branch: int = 0):
        self.unet = unet
        self.interval = int(interval)
        self.block_id, self.layer_id = branch // 3, branch % 3
        self.step = 0
        self._cache: dict = {}

    @property
    def enabled(self) -> bool:
        return self.interval > 1

    def _skip(self, block_i: int, layer_i: int, kind: str) -> bool:
        if self.step % self.interval == 0:
            return False
        if kind == "mid" or block_i > self.block_id:
            return True
        if block_i < self.block_id:
            return False
        return layer_i >= self.layer_id if kind == "down" else layer_i > self.layer_id

    def _targets(self) -> Iterator[tuple[nn.Module, tuple]]:
        unet = self.unet
        for block_i, block in enumerate(unet.down_blocks):
            for layer_i, m in enumerate(getattr(block, "attentions", None) or []):
                yield m, ("down", "attn", block_i, layer_i)
            for layer_i, m in enumerate(getattr(block, "motion_modules", None) or []):
                if m is not None:
                    yield m, ("down", "motion", block_i, layer_i)
            resnets = getattr(block, "resnets", None) or []
            for layer_i, m in enumerate(resnets):
                yield m, ("down", "resnet", block_i, layer_i)
            for m in getattr(block, "downsamplers", None) or []:
                yield m, ("down", "downsampler", block_i, len(resnets))
            yield block, ("down", "block", block_i, 0)
        yield unet.mid_block, ("mid", "block", 0, 0)
        num = len(unet.up_blocks)
        for i, block in enumerate(unet.up_blocks):
            block_i = num - i - 1  # up blocks are numbered from the shallow end, as in DeepCache
            resnets = getattr(block, "resnets", None) or []
            for layer_i, m in enumerate(getattr(block, "attentions", None) or []):
                yield m, ("up", "attn", block_i, len(resnets) - layer_i - 1)
            for layer_i, m in enumerate(getattr(block, "motion_modules", None) or []):
                if m is not None:  # recomputing them on cached inputs would give the cached output
                    yield m, ("up", "motion", block_i, len(resnets) - layer_i - 1)
            for layer_i, m in enumerate(resnets):
                yield m, ("up", "resnet", block_i, len(resnets) - layer_i - 1)
            for m in getattr(block, "upsamplers", None) or []:
                yield m, ("up", "upsampler", block_i, 0)
            yield block, ("up", "block", block_i, 0)

    def _wrap(self, module: nn.Module, key: tuple):
        original = module.forward
        kind, _, block_i, layer_i = key

        def forward(*args, **kwargs):
            if self._skip(block_i, layer_i, kind) and key in self._cache:
                return self._cache[key]
            out = original(*args, **kwargs)
            self._cache[key] = out
            return out

        module.forward = forward

    @contextlib.contextmanager
    def active(self):
        """Wrap the blocks for the duration of the block; always restores them (also on interrupt)."""
        if not self.enabled:
            yield self
            return
        wrapped = []
        try:
            for module, key in self._targets():
                self._wrap(module, key)
                wrapped.append(module)
            yield self
        finally:
            for module in wrapped:
                module.__dict__.pop("forward", None)  # back to the class's forward
            self._cache.clear()
            self.step = 0
