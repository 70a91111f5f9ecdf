#!/usr/bin/env bash
# Fit one instruction per exemplar folder: SETS/NAME/{before,after}/ -> OUT/NAME.inst.
# Re-running skips the sets already fitted.  Usage: fit_every_set.sh SETS OUT [extra invert fit flags...]
set -euo pipefail
sets=${1:?usage: fit_every_set.sh SETS OUT [flags...]}
out=${2:?usage: fit_every_set.sh SETS OUT [flags...]}
shift 2
mkdir -p "$out"
for dir in "$sets"/*/; do
  name=$(basename "$dir")
  [ -e "$out/$name.inst" ] && { echo "skip $name (done)"; continue; }
  invert fit "$dir" -o "$out/$name.inst" "$@"
done
