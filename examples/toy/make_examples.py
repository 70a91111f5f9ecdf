"""Write the toy world's exemplar folders: 10 train + 5 test before/after pairs per edit, 32x32 PNGs.

    python examples/toy/make_examples.py            # writes examples/toy/<name>/{train,test}/{before,after}/

The scenes are held out from the toy model's training (its pairs use seeds below 10**6).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from invert.toy.world import DEFAULT_SIZE, write_pair_folder

HERE = Path(__file__).parent
SEED = 2_000_000
EXAMPLES = {
    "night": "night",  # a global catalogue edit
    "red_circle": "circle_red",  # a local catalogue edit
    "sepia_frame": "sepia_frame",  # a held-out composition of two catalogue edits
    "hue90": "hue90",  # a held-out strength between the trained 60 and 120 degree hue shifts
}


def main() -> None:
    for index, (folder, edit) in enumerate(EXAMPLES.items()):
        shutil.rmtree(HERE / folder, ignore_errors=True)
        write_pair_folder(HERE / folder, edit, n_train=10, n_test=5, seed=SEED + index, size=DEFAULT_SIZE)
        print(f"{HERE / folder}: {edit}")


if __name__ == "__main__":
    main()
