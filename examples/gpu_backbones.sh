#!/usr/bin/env bash
# The other backbones on a machine with one CUDA GPU, offline, in at most 7 minutes: for SDXL InstructPix2Pix and
# CosXL Edit with random weights from the shipped full-size configs, bf16, at the model's resolution (1024 px),
# each method's fit seconds per step and peak memory (default and --low-memory) and apply seconds per image.
# Writes OUT/gpu_speed.json and OUT/gpu_speed.md.
# Usage: gpu_backbones.sh [OUT] [--budget SECONDS] [--methods visii,brush,lora] [--backbones MODELS]
set -euo pipefail
out=${1:-gpu-backbones}
shift $(( $# > 0 ? 1 : 0 ))
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m benchmarks.gpu --out "$out" --backbones-only --budget 420 \
    --backbones random:sdxl-instructpix2pix,random:cosxl-edit "$@"
