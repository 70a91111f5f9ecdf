#!/usr/bin/env bash
# README's picture: what the quick start makes on the shipped toy model (CPU, no network, a few minutes).
# It runs examples/quickstart.sh and keeps one of its `apply --grid` results: exemplar before | exemplar after |
# input | result, titled and enlarged (nearest-neighbour) to 256 pixels high.
#   examples/make_readme_picture.sh [PICTURE]     (default docs/images/quickstart_night.png; uses `invert` from PATH
#                                                  or $INVERT, as quickstart.sh does)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PICTURE="${1:-$HERE/../docs/images/quickstart_night.png}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$HERE/quickstart.sh" "$WORK" >&2
mkdir -p "$(dirname "$PICTURE")"
cp "$WORK/night/002_grid.png" "$PICTURE"  # test scene 002: a yellow circle and an orange star
echo "wrote $PICTURE"
