"""The toy DiT trainer (benchmarks/toy_dit_train.py) writes a folder Flux2KleinPipeline loads, and the hand loop
the oracle samples with (benchmarks/klein_loop.py) is the pipeline's own, bit for bit."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import oracle, toy_dit_train
from benchmarks.klein_loop import call_settings, sample
from invert.errors import InvertError
from invert.toy import world


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_dit")
    toy_dit_train.main(["--out", str(out), "--steps-text", "2", "--steps-vae", "2", "--steps-transformer", "2",
                        "--pairs-per-edit", "2", "--eval-n", "0", "--threads", "1"])
    return out


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(str(folder))  # offline: conftest sets HF_HUB_OFFLINE
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_folder_is_a_klein_pipeline_with_its_text_settings(folder, pipe):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline" and index["is_distilled"] is False
    assert {type(getattr(pipe, n)).__name__ for n in ("transformer", "vae", "text_encoder", "scheduler")} == {
        "Flux2Transformer2DModel", "AutoencoderKLFlux2", "Qwen3ForCausalLM", "FlowMatchEulerDiscreteScheduler"}
    assert call_settings(folder) == toy_dit_train.TEXT
    info = json.loads((folder / "toy_world.json").read_text())
    assert info["training"]["transformer"]["steps"] == 2 and info["weights_mb"] < 30
    # the batch-norm statistics the pipeline normalizes latents with were set from the data, not left at 0 / 1
    assert pipe.vae.bn.running_var.ne(1).all() and pipe.vae.bn.running_mean.ne(0).any()


def test_its_clip_is_the_toy_clip_it_names(folder, tmp_path):
    """The folder names the toy IP2P's CLIP (the same world) in its invert.json, wherever the folder is, so
    --init best and eval find a CLIP offline; a bad name is one error naming the file."""
    from invert.backbones.model_info import toy_model_path
    from invert.clip import clip_name_for
    from invert.errors import ModelLoadError

    assert Path(clip_name_for(None, str(folder))) == (toy_model_path("toy") / "clip").resolve()
    assert clip_name_for("open_clip:ViT-B-32/openai", str(folder)) == "open_clip:ViT-B-32/openai"
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "invert.json").write_text(json.dumps({"clip": 3}))
    with pytest.raises(ModelLoadError, match=r"invert.json: 'clip' should be"):
        clip_name_for(None, str(tmp_path))


def test_its_phrases_are_the_toy_worlds(folder, tmp_path):
    """--init best's phrases on the toy DiT are the toy world's (its invert.json names the vocabulary, as the toy
    IP2P's folder holds it), not the default list of photo phrases; a file relative to the folder works too, and a
    bad name is one error naming the file."""
    from invert.errors import ModelLoadError
    from invert.vocab import load_vocab, model_vocab

    assert model_vocab(str(folder)) == model_vocab("toy-dit") == ("toy",)
    assert load_vocab(model_vocab("toy-dit")) == load_vocab(model_vocab("toy"))
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "words.txt").write_text("a red circle\n")
    (tmp_path / "invert.json").write_text(json.dumps({"vocab": "words.txt"}))
    assert load_vocab(model_vocab(str(tmp_path))) == ["a red circle"]
    (tmp_path / "invert.json").write_text(json.dumps({"vocab": ["toy"]}))
    with pytest.raises(ModelLoadError, match=r"invert.json: 'vocab' should be"):
        model_vocab(str(tmp_path))


def test_reuse_trains_the_transformer_only(folder, pipe, tmp_path):
    from diffusers import Flux2KleinPipeline

    toy_dit_train.main(["--out", str(tmp_path), "--reuse", str(folder), "--steps-transformer", "1",
                        "--pairs-per-edit", "2", "--eval-n", "0", "--threads", "1"])
    again = Flux2KleinPipeline.from_pretrained(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(again.text_encoder.parameters(), pipe.text_encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(again.vae.parameters(), pipe.vae.parameters()))
    assert not torch.equal(again.transformer.proj_out.weight, pipe.transformer.proj_out.weight)
    assert json.loads((tmp_path / "toy_world.json").read_text())["training"]["vae"]["from"] == str(folder)


def test_every_instruction_fits_the_prompt_length_whole(pipe):
    names = list(world.EDITS) + list(world.HARD_EDITS)
    assert toy_dit_train.templated_length(pipe.tokenizer, [world.get_edit(n).instruction for n in names]) <= 32
    assert pipe.tokenizer.tokenize("remove the square and make it night") == [
        "remove", "Ġthe", "Ġsquare", "Ġand", "Ġmake", "Ġit", "Ġnight"]


def test_the_hand_loop_edits_32_px_images_in_a_batch(folder, pipe):
    befores = [b for b, _ in world.make_pairs("night", 3, 10**6)]
    out = sample(pipe, befores, ["make it night"] * 3, 2.0, 2, torch.Generator().manual_seed(0),
                 call_settings(folder))
    assert out.shape == (3, 3, 32, 32) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("guidance", [1.0, 4.0])  # 1: one transformer call a step; 4: CFG against ""
def test_the_hand_loop_is_the_pipeline_bit_for_bit(folder, pipe, guidance):
    # The pipeline refuses images under 64 px: compare at 64.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    text = call_settings(folder)
    ours = sample(pipe, [image], ["make it night"], guidance, 3, torch.Generator().manual_seed(1), text)
    theirs = pipe(image=image, prompt="make it night", height=64, width=64, num_inference_steps=3,
                  guidance_scale=guidance, generator=torch.Generator().manual_seed(1), output_type="pt",
                  max_sequence_length=text.max_sequence_length,
                  text_encoder_out_layers=text.text_encoder_out_layers).images
    assert torch.equal(ours, theirs)


def test_the_oracle_reads_a_klein_folder(folder):
    result = oracle.evaluate_oracle(folder, n=2, guidances=((1.0,), (3.0,)), steps=2,
                                    edits=["night", "circle_red", "dusk"])
    assert result["settings"] == ["1", "3"] and set(result["means"]) == {"global", "local", "hard"}
    assert "target_gain" not in result["means"]["hard"]  # the targets are the catalogue's
    means, rows = result["means"], result["rows"]  # dusk is a global look, but a held-out edit: not a global mean's
    assert means["global"]["no_edit"] == rows["night"]["no_edit"]
    assert means["hard"]["no_edit"] == rows["dusk"]["no_edit"]
    assert "mean hard" in oracle.format_table(result)
    with pytest.raises(InvertError, match="one guidance scale"):
        oracle.evaluate_oracle(folder, n=1, guidances=((7.5, 1.5),), steps=1, edits=["night"])
