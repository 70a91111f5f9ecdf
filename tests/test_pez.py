"""PEZ hard prompts on tiny CLIPs built from config (transformers and open_clip)."""
import json

import pytest
import torch
from conftest import float_noise, scene

from invert.errors import InvertError
from invert.fitting.pez import pez_prompt, text_tower


def afters():
    return [scene(i, night=True) for i in range(3)]


def mean_similarity(clip, texts, images):
    """CLIP's own text features of ``texts`` (tokenized afresh), mean cosine to ``images``."""
    img = torch.nn.functional.normalize(clip.image_features(images), dim=-1)
    return (torch.nn.functional.normalize(clip.text_features(texts), dim=-1) @ img.T).mean(1)


@pytest.fixture(scope="module")
def open_clip_tiny(tmp_path_factory):
    """A tiny open_clip model registered from a config file (random weights, nothing downloaded)."""
    import open_clip

    from invert.clip import load_clip

    folder = tmp_path_factory.mktemp("open-clip-config")
    (folder / "invert-tiny-test.json").write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    return load_clip("open_clip:invert-tiny-test")


def test_pez_prompt_beats_random_prompts_and_is_reproducible(clip):
    images = afters()
    prompt = pez_prompt(clip, images, steps=100, seed=0)
    assert prompt == pez_prompt(clip, images, steps=100, seed=0)
    assert prompt != pez_prompt(clip, images, steps=100, seed=1)
    tower = text_tower(clip)
    gen = torch.Generator().manual_seed(123)
    random_prompts = [tower.decode(torch.randint(49406, (10,), generator=gen).tolist()) for _ in range(50)]
    # Measured with CLIP's own text path on the decoded text, as VISII uses it (re-encoding may merge tokens).
    assert mean_similarity(clip, [prompt], images).item() > mean_similarity(clip, random_prompts, images).max()


@pytest.mark.parametrize("kind", ["transformers", "open_clip"])
def test_spliced_token_embeddings_give_the_models_own_text_features(kind, clip, open_clip_tiny):
    """PEZ's forward (token embeddings of positions 1..k replaced) equals the model on those tokens' ids."""
    model = clip if kind == "transformers" else open_clip_tiny
    tower = text_tower(model)
    tokens = torch.tensor([320, 1929, 539, 7599])  # "a photo of night", say: any ids but the special ones
    ids = torch.full((1, tower.length), tower.pad, dtype=torch.long)
    ids[0, 0], ids[0, len(tokens) + 1] = tower.bos, tower.eos
    placeholder = ids.clone()
    ids[0, 1:len(tokens) + 1] = tokens
    placeholder[0, 1:len(tokens) + 1] = 1000  # other ids, whose embeddings the splice must replace
    with torch.no_grad():
        expected = tower.encode(ids).float()
        spliced = tower.features(placeholder, tower.embedding.weight[tokens])
    torch.testing.assert_close(spliced, expected, rtol=0, atol=float_noise(expected))


def test_pez_with_open_clip(open_clip_tiny):
    prompt = pez_prompt(open_clip_tiny, afters(), tokens=4, steps=20, seed=0)
    assert prompt and prompt == pez_prompt(open_clip_tiny, afters(), tokens=4, steps=20, seed=0)


def test_pez_refuses_impossible_lengths(clip):
    with pytest.raises(InvertError, match="1 to 75 tokens"):
        pez_prompt(clip, afters(), tokens=76, steps=1)
    with pytest.raises(InvertError, match="at least one step"):
        pez_prompt(clip, afters(), steps=0)
