"""What an edit encoder trains on: episodes, each one edit's pairs split in two, those it encodes and those the loss
is taken on. From the toy world's generator (catalogue edits, composed and at random strengths; the hard edits held
out), or from a folder of pair sets in fit-batch's layout (one edit per set)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvertError
from ..pairs import Pair, exemplar_sets, find_pairs, load_pairs

TOY = "toy"


@dataclass
class Episode:
    name: str  # the edit
    befores: list[Image.Image]  # the pairs encoded
    afters: list[Image.Image]
    loss_befores: list[Image.Image]  # other pairs of the same edit, the loss's
    loss_afters: list[Image.Image]


class ToyEdits:
    """The toy world's edits (:func:`invert.toy.world.random_edit`): fresh scenes for every episode."""

    description = "the toy world's catalogue edits, composed and at random strengths (the hard edits held out)"

    def episode(self, rng: np.random.Generator, encoded: int, loss: int, resolution: int) -> Episode:
        from ..toy import world

        while True:
            edit = world.random_edit(rng)
            try:
                pairs = [world.apply_edit(edit, world.scene_for(edit, rng), resolution)
                         for _ in range(encoded + loss)]
            except RuntimeError:  # a composition that the drawn scenes could not take
                continue
            return _split(edit.name, pairs, encoded)


class PairSets:
    """One edit per subfolder of ``root`` (fit-batch's layout: a pairs folder, or one in ``train/``), each with at
    least two pairs; an episode encodes some of a set's pairs and takes the loss on others."""

    def __init__(self, root: str | Path):
        self.sets: list[tuple[str, list[Pair]]] = []
        for name, folder in exemplar_sets(Path(root)):
            pairs = find_pairs(folder)
            if len(pairs) < 2:
                raise InvertError(f"{folder}: {len(pairs)} pair; an encoder learns from sets of at least 2 (it encodes "
                                  "some and learns from the others)")
            self.sets.append((name, pairs))
        self.description = f"{len(self.sets)} pair sets of {root}"

    def episode(self, rng: np.random.Generator, encoded: int, loss: int, resolution: int) -> Episode:
        name, pairs = self.sets[int(rng.integers(len(self.sets)))]
        order = rng.permutation(len(pairs))
        encoded = min(encoded, len(pairs) - 1)  # at least one pair is left for the loss
        chosen = [pairs[i] for i in order[:encoded + loss]]
        befores, afters = load_pairs(chosen, resolution)
        return _split(name, list(zip(befores, afters)), encoded)


def _split(name: str, pairs: list[tuple[Image.Image, Image.Image]], encoded: int) -> Episode:
    return Episode(name, [b for b, _ in pairs[:encoded]], [a for _, a in pairs[:encoded]],
                   [b for b, _ in pairs[encoded:]], [a for _, a in pairs[encoded:]])


def training_data(source: str | Path) -> ToyEdits | PairSets:
    """``toy`` (the toy world's generator) or a folder of pair sets (checked now, before any model loads)."""
    return ToyEdits() if str(source) == TOY else PairSets(source)


__all__ = ["Episode", "PairSets", "TOY", "ToyEdits", "training_data"]
