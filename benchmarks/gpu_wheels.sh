#!/usr/bin/env bash
# Prepares .whl/ (git-ignored) for benchmarks/gpu_run.sh: the pure-Python wheels that the lent GPU
# machine's image lacks. Its Python is 3.12 with torch, transformers, safetensors, huggingface-hub,
# opencv-headless and numpy already there, but no diffusers (and no importlib_metadata, which it needs).
# Run here, in the repo root, where pip can reach an index; the wheels travel with `carry: [".whl"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "diffusers==0.42.1" "importlib_metadata==10.2.0" \
  "peft==0.21.2" "accelerate==1.16.0" "transformers==5.25.0" "psutil==7.2.2"  # the LoRA rows of benchmarks/train.py
ls -l .whl
