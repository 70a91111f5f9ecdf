#!/usr/bin/env bash
# Apply every instruction to every test folder, score each instruction on its own set, and print a table.
#   apply_every_instruction.sh INSTS TESTS OUT [flags for both invert apply and invert eval...]
#     INSTS   folder of NAME.inst files (what `invert fit-batch` writes)
#     TESTS   folder of sets NAME/test/{before,after}/ (the layout of examples/toy)
#     OUT     gets OUT/INST/SET/*.png for every pair, and OUT/INST/INST.{json,sheet.png} where a set has
#             the instruction's name
#   e.g. invert fit-batch examples/toy -o insts --model toy --method brush --steps 100
#        examples/apply_every_instruction.sh insts examples/toy out --model toy
# The flags go to both commands, so only ones they share: --model, --device, --dtype, --steps, --seed,
# --fresh-noise, --allow-model-mismatch, --force.  A re-run skips the work already done unless --force.
set -euo pipefail
usage="usage: apply_every_instruction.sh INSTS TESTS OUT [flags...]"
insts=${1:?$usage}
tests=${2:?$usage}
out=${3:?$usage}
shift 3
INVERT="${INVERT:-invert}"
PYTHON="${PYTHON:-python3}"
force=0
for flag in "$@"; do [ "$flag" = --force ] && force=1; done

# A set's results are complete when every input has its STEM.png (the name invert apply gives it).
applied() {  # BEFORE_FOLDER RESULT_FOLDER
  local f stem
  [ -d "$2" ] || return 1
  for f in "$1"/*; do
    stem=${f##*/}
    [ -e "$2/${stem%.*}.png" ] || return 1
  done
}

shopt -s nullglob
failed=0
for inst in "$insts"/*.inst; do
  name=$(basename "$inst" .inst)
  for dir in "$tests"/*/; do
    dir=${dir%/}
    sname=$(basename "$dir")
    [ -d "$dir/test/before" ] || continue
    dest="$out/$name/$sname"
    mkdir -p "$dest"
    if [ $force = 1 ] || ! applied "$dir/test/before" "$dest"; then
      echo "apply $name -> $sname" >&2
      # --keep-going: one unreadable image must not stop the others; invert lists the failures, and this
      # script's exit status reports them.  --force: this script decides what is done, so whatever an
      # interrupted run left may be overwritten.  The "wrote" lines go to stderr: stdout is for the table.
      "$INVERT" apply "$inst" "$dir/test/before" -o "$dest" --keep-going --force "$@" >&2 || failed=1
    fi
    # Only the set the instruction was fitted on has the afters it is meant to produce.
    if [ "$sname" = "$name" ] && [ -d "$dir/test/after" ] && { [ $force = 1 ] || [ ! -s "$dest.json" ]; }; then
      echo "eval $name on $sname" >&2
      # Via a temporary file, so that an interrupted eval leaves no JSON for a re-run to mistake as done.
      if "$INVERT" eval "$inst" "$dir/test" --sheet "$dest.sheet.png" --json --force "$@" > "$dest.json.tmp"; then
        mv "$dest.json.tmp" "$dest.json"
      else
        rm -f "$dest.json.tmp"
        failed=1
      fi
    fi
  done
done

# The table covers every score in OUT, from this run or an earlier one; plain Python, no jq needed.
"$PYTHON" - "$out" <<'EOF'
import json, pathlib, sys

rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/*.json")):
    psnr = json.loads(path.read_text())["mean"]["psnr"]
    rows.append((path.parent.name, path.stem, f"{psnr:.2f}"))
print(f"{'instruction':24s} {'set':24s} {'mean PSNR (dB)':>14s}")
for inst, set_name, psnr in rows:
    print(f"{inst[:24]:24s} {set_name[:24]:24s} {psnr:>14s}")
EOF
exit $failed
