"""The full-size InstructPix2Pix architecture (random weights from the shipped configs) at 512x512 on the CPU:
one fit step and a 2-step apply. Slow (a few minutes on 2 cores) but run in CI: it proves the real shapes work."""
import numpy as np
import pytest
import torch
from PIL import Image

import invert
from invert.api import fit_images
from invert.settings import FitSettings

pytestmark = pytest.mark.full_size


@pytest.fixture(scope="module")
def full_editor():
    return invert.load_editor("random", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def full_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from invert.backbones.ip2p import CONFIGS
    from invert.backbones.tokenizer import clip_tokenizer
    from invert.clip import TransformersClip

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig.from_pretrained(CONFIGS / "clip-vit-large-patch14"))
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return TransformersClip("random:clip-vit-large-patch14", model, processor, clip_tokenizer(), torch.device("cpu"))


def test_full_size_fit_step_and_apply_at_512(full_editor, full_clip):
    unet = full_editor.unet
    assert unet.config.in_channels == 8 and sum(p.numel() for p in unet.parameters()) == 859_532_484
    cross = full_editor.cross_attention_layers()
    assert len(cross) == 16 and sum(full_editor.instruction_kv_layers().values()) == 12_480
    rng = np.random.default_rng(0)
    before = Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
    after = Image.fromarray(255 - np.asarray(before))
    inst = fit_images(full_editor, [before], [after], "visii",
                      FitSettings(steps=1, resolution=512, init_text="invert the colors"), clip=full_clip, quiet=True)
    learned = inst.tensors["visii.learned"]
    assert learned.shape == (1, 4, 768) and torch.isfinite(learned).all()
    assert not torch.equal(learned, inst.tensors["visii.init"][:, 1:5]), "one step moved the instruction"
    result = invert.apply(inst, [before], editor=full_editor, steps=2)[0]
    assert result.size == (512, 512)
