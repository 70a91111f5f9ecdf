"""Unique-phrase initialization and vocabularies, on a small CLIP whose similarities are planted."""
import numpy as np
import pytest
import torch
from PIL import Image

from invert.clip import Clip
from invert.fitting.phrases import caption, unique_phrases
from invert.vocab import load_vocab, vocab_path

PHRASES = ["daylight", "night", "a red square", "a blue square", "noise one", "noise two"]
# Each phrase's feature direction; images map to [brightness, 1 - brightness, redness, blueness, 0.5, 0.5].
FEATURES = {"daylight": [1, 0, 0, 0, 0, 0], "night": [0, 1, 0, 0, 0, 0], "a red square": [0, 0, 1, 0, 0, 0],
            "a blue square": [0, 0, 0, 1, 0, 0], "noise one": [0, 0, 0, 0, 1, 0], "noise two": [0, 0, 0, 0, 0, 1]}


class PlantedClip(Clip):
    name = "planted"
    text_width = 6

    def image_features(self, images):
        rows = []
        for img in images:
            a = np.asarray(img, dtype=np.float32) / 255
            bright = a.mean()
            rows.append([bright, 1 - bright, a[..., 0].mean() - a[..., 2].mean(), a[..., 2].mean() - a[..., 0].mean(),
                         0.5, 0.5])
        return torch.tensor(rows)

    def text_features(self, texts):
        return torch.tensor([FEATURES[t] for t in texts], dtype=torch.float32)


def img(rgb):
    return Image.new("RGB", (8, 8), rgb)


BEFORES = [img((230, 230, 230)), img((240, 220, 220))]
AFTERS = [img((20, 20, 60)), img((30, 20, 50))]


def test_picks_the_planted_phrases():
    choice = unique_phrases(PlantedClip(), BEFORES, AFTERS, PHRASES, top=3, threshold=0.15)
    assert (choice.p_x, choice.p_y) == ("daylight", "night")
    assert choice.text == "turn daylight into night"
    assert choice.score_y > 0.15 and choice.score_x < -0.15
    assert {c["side"] for c in choice.candidates} == {"before", "after"}


def test_threshold_truncates_and_falls_back_to_empty():
    assert unique_phrases(PlantedClip(), BEFORES, AFTERS, PHRASES, threshold=5.0).text == ""
    same = unique_phrases(PlantedClip(), BEFORES, BEFORES, PHRASES, threshold=0.01)
    assert same.text == "" and same.p_x is None and same.p_y is None


def test_after_only_template():
    befores = [img((128, 128, 128))]
    afters = [img((250, 250, 250))]
    choice = unique_phrases(PlantedClip(), befores, afters, ["daylight", "noise one"], top=1, threshold=0.1)
    assert choice.text == "turn it into daylight"


def test_relative_threshold_mode():
    """Relative: in units of the similarities' spread over the vocabulary; the ranking is unchanged."""
    choice = unique_phrases(PlantedClip(), BEFORES, AFTERS, PHRASES, threshold=1.0, relative=True)
    assert (choice.p_x, choice.p_y) == ("daylight", "night") and choice.score_y > 1.0
    assert unique_phrases(PlantedClip(), BEFORES, AFTERS, PHRASES, threshold=50.0, relative=True).text == ""


def test_caption_ranks_by_similarity():
    assert caption(PlantedClip(), AFTERS, PHRASES, count=1) == "night"


def test_vocabularies():
    default = load_vocab(["default"])
    assert len(default) > 300 and "a watercolor painting" in default and not any(p.startswith("#") for p in default)
    mediums = load_vocab(["mediums"])  # clip-interrogator's own list, read as a file
    assert len(mediums) > 50 and vocab_path("mediums").name == "mediums.txt"
    with pytest.raises(Exception, match="unknown vocabulary"):
        load_vocab(["no-such-list"])
