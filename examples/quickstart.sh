#!/usr/bin/env bash
# The README quick start, on the toy model that ships with invert (CPU, no network, a few minutes):
# learn "make it night" from 10 exemplar pairs, apply it to 5 new images, and score the results.
#   examples/quickstart.sh [OUTPUT_FOLDER]        (default ./quickstart-out; uses `invert` from PATH or $INVERT)
#   MODEL=toy-dit examples/quickstart.sh          (the same on the toy DiT editor, a FLUX.2 [klein] of the same world)
set -euo pipefail
OUT="${1:-./quickstart-out}"
INVERT="${INVERT:-invert}"
MODEL="${MODEL:-toy}"
PAIRS="$(cd "$(dirname "$0")" && pwd)/toy/night"
mkdir -p "$OUT"

"$INVERT" fit "$PAIRS/train" -o "$OUT/night.inst" --model "$MODEL" --method brush --steps 100 --force
"$INVERT" apply "$OUT/night.inst" "$PAIRS/test/before" -o "$OUT/night" --grid --force
"$INVERT" eval "$OUT/night.inst" "$PAIRS/test" --sheet "$OUT/night_sheet.png" --force
