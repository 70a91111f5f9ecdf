#!/usr/bin/env bash
# The whole GPU speed table on a machine with one CUDA GPU, offline, in at most 8 minutes (--budget): the IP2P
# table first (visii, brush and lora at 512 px on the full IP2P architecture with random weights, fp16 and bf16),
# then every other registered backbone (FLUX.2 [klein] base 4B, SDXL InstructPix2Pix, FLUX.1 Kontext [dev]) with
# random weights from its shipped full-size configs, bf16, at its own resolution, each method with and without
# --low-memory; each part within its share of the budget (python -m benchmarks.gpu --help says which).
# One backbone with the whole budget: --models flux2-klein
# Writes OUT/gpu_speed.json and OUT/gpu_speed.md.
# Usage: gpu_speed.sh [OUT] [--budget SECONDS] [--tiny] [--methods visii,brush,lora] [--precisions fp16,bf16]
#                     [--models ip2p,flux2-klein,sdxl-ip2p,flux1-kontext]
# (--tiny: the toy model and each backbone's tiny configs on any device, a few steps; CI runs it on the CPU to
# check the script works)
set -euo pipefail
out=${1:-gpu-speed}
shift $(( $# > 0 ? 1 : 0 ))
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m benchmarks.gpu --out "$out" "$@"
