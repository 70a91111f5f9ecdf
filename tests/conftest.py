"""Tiny models built from config, as diffusers' get_dummy_components() does. Nothing here touches a network."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

TINY_RES = 32

# Two fp32 computations of one quantity that differ only in kernel choice or batch shape sum in another order:
# they agree to a few units in the last place (ulp) of the quantity's largest entry per operation, and a deep
# network accumulates that to tens of ulps. 64 ulps of the scale (7.6e-6 relative) is far below any real bug
# (a missing row or a wrong weight moves results by percents) and does not depend on one library's kernels.
KERNEL_ULPS = 64
# The guided prediction uncond + 7.5 (text - image) + 1.5 (image - uncond) weighs each row's error by up to
# 1 + 2 x 7.5 + 2 x 1.5 = 19.
GUIDANCE_GAIN = 1 + 2 * 7.5 + 2 * 1.5


def float_noise(*references, gain: float = 1.0) -> float:
    """An absolute tolerance for comparing fp32 results that differ only by kernel choice or batch shape:
    KERNEL_ULPS ulps of the largest entry of ``references``, times ``gain`` (how much the compared quantity
    amplifies an error in them)."""
    scale = max(float(torch.as_tensor(r).detach().abs().max()) for r in references)
    return gain * KERNEL_ULPS * torch.finfo(torch.float32).eps * scale


def get_dummy_components():
    """A tiny InstructPix2Pix (8-channel UNet, VAE, CLIP text encoder, the real CLIP tokenizer) and a tiny CLIP
    whose text width matches the text encoder's, as the direction loss needs."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    from invert.backbones.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 32), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, layers_per_block=1)
    text_config = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                       vocab_size=49408, max_position_embeddings=77, projection_dim=16, bos_token_id=49406,
                       eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                steps_offset=1)
    torch.manual_seed(1)
    clip = CLIPModel(CLIPConfig(text_config=text_config, projection_dim=16, vision_config=dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=8, projection_dim=16)))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False), clip


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["INVERT_CACHE"] = str(tmp_path_factory.mktemp("invert-cache"))


@pytest.fixture(scope="session", autouse=True)
def _tokenizers_read_once():
    """Each command a test runs loads its model anew, and reading the CLIP tokenizer's files (the 49,408 tokens of
    vocab.json and merges.txt) is most of loading the tiny model: 1.9 of an `invert apply`'s 3.0 s on a busy
    machine. A folder's files do not change during the run, and invert never changes a tokenizer, so each folder's
    is read once and later loads get that one; everything else of a model still loads every time."""
    from transformers import CLIPTokenizer

    read = CLIPTokenizer.from_pretrained.__func__
    loaded = {}

    def from_pretrained(cls, path, *args, **kwargs):
        key = repr((cls, os.fspath(path), args, sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = read(cls, path, *args, **kwargs)
        return loaded[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CLIPTokenizer, "from_pretrained", classmethod(from_pretrained))
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, _isolated_cache):
    """A diffusers IP2P folder with a clip/ subfolder, loaded by path like a user's local copy."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    folder = tmp_path_factory.mktemp("tiny-ip2p")
    components, clip = get_dummy_components()
    StableDiffusionInstructPix2PixPipeline(**components).save_pretrained(folder)
    clip.save_pretrained(folder / "clip")
    return folder


@pytest.fixture(scope="session")
def editor(tiny_model_dir):
    from invert.backbones import load_editor

    return load_editor(str(tiny_model_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def clip(tiny_model_dir):
    from invert.clip import load_clip

    return load_clip(str(tiny_model_dir / "clip"))


@pytest.fixture(scope="session")
def toy():
    """The shipped toy model, loaded once for the tests that fit or apply on it."""
    from invert.backbones import load_editor

    return load_editor("toy", device="cpu", dtype="fp32")


def scene(seed: int, size: int = TINY_RES, night: bool = False) -> Image.Image:
    """A random blocky image; ``night`` darkens it and tints it blue (a simple, learnable edit)."""
    rng = np.random.default_rng(seed)
    img = np.kron(rng.uniform(0.2, 1.0, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
    if night:
        img = img * np.array([0.3, 0.35, 0.6])
    return Image.fromarray((img * 255).astype(np.uint8))


@pytest.fixture
def pairs_dir(tmp_path):
    """A before/ + after/ pairs folder of three 'night' pairs."""
    for side in ("before", "after"):
        (tmp_path / "pairs" / side).mkdir(parents=True)
    for i in range(3):
        scene(i).save(tmp_path / "pairs" / "before" / f"{i}.png")
        scene(i, night=True).save(tmp_path / "pairs" / "after" / f"{i}.png")
    return tmp_path / "pairs"


@pytest.fixture
def run():
    """``run(*args)``: the invert command in-process; exceptions other than Click's propagate (no hidden tracebacks)."""
    from click.testing import CliRunner

    from invert.cli.main import cli

    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def messages(output: str) -> list[str]:
    """A command's output lines less invert's "loading X (where) ..." lines (said before a model loads, so they
    precede an error found once it has): what a one-line-error check looks at."""
    return [line for line in output.strip().splitlines() if not line.startswith("loading ")]


def tiny_fit(editor, befores, afters, method="visii", *, clip=None, **options):
    """invert.api.fit_images on opened images at the tiny model's resolution; ``options`` by name (the loop's
    and the method's settings), as invert.fit takes them."""
    from invert.api import fit_images
    from invert.methods import settings_for

    options.setdefault("resolution", TINY_RES)
    quiet = options.pop("quiet", True)
    extra = {k: options.pop(k) for k in ("progress", "resume", "should_stop", "checkpoint", "save_every")
             if k in options}
    return fit_images(editor, befores, afters, method, *settings_for(method, options), clip=clip, quiet=quiet, **extra)


def stop_at(step: int) -> dict:
    """``progress`` and ``should_stop`` for a fit that stops after ``step`` steps, as a Stop button pressed then
    would (should_stop may be asked more than once per step, so it must not count its calls)."""
    done = [0]

    def progress(p) -> None:
        done[0] = p.step

    return {"progress": progress, "should_stop": lambda: done[0] >= step}


def make_trainer(editor, befores, afters, method, **options):
    """A Trainer for ``method`` (an initialized Method) on opened images, settings by name."""
    from invert.fitting.loop import FitData, Trainer
    from invert.settings import FitSettings

    settings = FitSettings(**{"resolution": TINY_RES, **options})
    return Trainer(method, FitData(editor, befores, afters, settings.seed), settings)


def check_states_share_the_first_steps_text_free_rows(editor, befores, afters, method: str, guidance: float,
                                                      image_guidance: float = 1.5) -> None:
    """Several untrained states of ``method`` scored by one Validation (the first step's text-free rows computed
    once and reused) score what each scores sampled on its own, every row computed; and they differ, so the rows
    reused are not the states' own."""
    from invert.fitting.validation import Validation
    from invert.methods import method_class, settings_for
    from invert.metrics import as_tensor, psnr
    from invert.sampling import sample

    own = settings_for(method, {})[1]
    states = [method_class(method).initialize(editor, editor.encode_text([t]), t, own, 0)
              for t in ("make it night", "make it sepia", "a photo")]
    scorer = Validation(editor, befores, afters, steps=3, guidance=guidance, image_guidance=image_guidance, seed=0)
    shared = [scorer.pair_scores(s) for s in states]
    alone = [[float(v) for v in psnr(as_tensor(sample(editor, s, befores, steps=3, guidance=guidance,
                                                       image_guidance=image_guidance, seed=0)), as_tensor(afters))]
             for s in states]
    assert len(next(iter(scorer._first_step.values()))) > 0, "the text-free rows were kept"
    for mine, theirs in zip(shared, alone):
        assert mine == pytest.approx(theirs, abs=1e-4)  # a call of other rows: float rounding only
    assert len({s[0] for s in alone}) == 3, "the states edit differently"
