#!/usr/bin/env bash
# The whole GPU speed table on a machine with one CUDA GPU, offline, in at most 8 minutes (visii, brush and
# lora at 512 px on the full IP2P architecture with random weights, fp16 and bf16; then FLUX.2 [klein] base 4B
# and FLUX.1 Kontext [dev] at 1024 px in bf16 with --low-memory, random weights from the shipped configs).
# With a short device lease, one model at a time: --models flux2-klein --budget 300
# Writes OUT/gpu_speed.json and OUT/gpu_speed.md.
# Usage: gpu_speed.sh [OUT] [--budget SECONDS] [--tiny] [--methods visii,brush,lora] [--precisions fp16,bf16]
#                     [--models ip2p,flux2-klein,flux1-kontext]
# (--tiny: the toy model on any device, a few steps; CI runs it on the CPU to check the script works)
set -euo pipefail
out=${1:-gpu-speed}
shift $(( $# > 0 ? 1 : 0 ))
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m benchmarks.gpu --out "$out" "$@"
