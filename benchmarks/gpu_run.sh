#!/usr/bin/env bash
# One prepared device check for issue #12: fps and peak VRAM of the sampler at the official settings
# (bf16, DDIM 20 steps, CFG 1.5) for 1.5 (256) and 1.6 (512), chunk_batch 1/2/4 x deepcache 0/3,
# channels-last, torch.compile. Run on the lent machine, after benchmarks/gpu_wheels.sh here:
#     run(command="BUDGET_S=300 bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=590)
# (BUDGET_S: throughput rows; TRAIN_BUDGET_S, default 150: the training rows that follow.)
# gpu.json is rewritten after every row and lands in $OUT, so a run stopped at its limit keeps its rows.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.csv"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
PYTHONUNBUFFERED=1 python3 benchmarks/throughput.py gpu --budget-s "${BUDGET_S:-400}" --out "$OUT/gpu.json" "$@" 2>&1 \
  | tee "$OUT/gpu.log"
# Training rows (issue #20): stage2 / stage2_efficient / lora at 256 px, batch 1, bf16, gradient
# checkpointing on then off; peak allocated/reserved VRAM and seconds per step (3 steps: the first warms up).
PYTHONUNBUFFERED=1 python3 benchmarks/train.py rows --precision bf16 --steps 3 --budget-s "${TRAIN_BUDGET_S:-150}" \
  --out "$OUT/train_gpu.json" 2>&1 | tee "$OUT/train_gpu.log"
