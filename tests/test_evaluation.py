"""Quality metrics (PSNR, SSIM, CLIP) and ``invert eval`` on the tiny model."""
import csv
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import scene
from PIL import Image

from invert.cli.main import cli
from invert.evaluation import as_tensor, psnr, score, ssim


def noisy(img: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    x = np.asarray(img, np.float32) + np.random.default_rng(seed).normal(0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))


def test_psnr_of_known_error():
    a = torch.zeros(1, 3, 8, 8)
    assert psnr(a + 0.1, a).item() == pytest.approx(20.0, abs=1e-4)  # mse 0.01 -> 20 dB


def test_ssim_is_one_for_identical_and_falls_with_noise():
    img = scene(1, size=48)
    x = as_tensor([img, noisy(img, 10), noisy(img, 40)])
    s = ssim(x, as_tensor([img] * 3))
    assert s[0].item() == pytest.approx(1.0, abs=1e-6)
    assert 1 > s[1] > s[2] > 0


def test_ssim_matches_the_definition_on_a_flat_pair():
    # Constant images: SSIM reduces to its luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    a, b = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.6)
    c1 = 0.01 ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_clip_scores(clip):
    befores = [scene(i) for i in range(3)]
    truths = [scene(i, night=True) for i in range(3)]
    perfect = score(befores, truths, truths, clip)
    assert perfect["mean"]["clip_image"] == pytest.approx(1.0, abs=1e-5)
    assert perfect["clip_direction_of_means"] == pytest.approx(1.0, abs=1e-5), "results == truths: same direction"
    column = [row["clip_direction"] for row in perfect["images"]]
    assert perfect["mean"]["clip_direction"] == pytest.approx(np.mean(column)), "the mean row is the column's mean"
    assert min(column) > 0.9, "each image's own direction is near the set's"
    unchanged = score(befores, befores, truths, clip)
    assert unchanged["mean"]["psnr"] < perfect["mean"]["psnr"]
    assert len(unchanged["images"]) == 3 and set(unchanged["images"][0]) == {"psnr", "ssim", "clip_image",
                                                                              "clip_direction"}


def test_eval_command(tiny_model_dir, pairs_dir, tmp_path):
    run = CliRunner().invoke
    inst = tmp_path / "n.inst"
    r = run(cli, ["fit", str(pairs_dir), "-o", str(inst), "--model", str(tiny_model_dir), "--resolution", "32",
                  "--steps", "2", "--init-text", "make it night", "--quiet"])
    assert r.exit_code == 0, r.output
    sheet = tmp_path / "sheet.png"
    r = run(cli, ["eval", str(inst), str(pairs_dir), "--json", "--steps", "2", "--sheet", str(sheet)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["mean"]) == {"psnr", "ssim", "clip_image", "clip_direction"}
    assert len(out["images"]) == 3 and out["images"][0]["name"]
    assert out["direction_source"] == "instruction"
    width, height = Image.open(sheet).size
    assert height > 3 * 256 and width > 3 * 256, "three rows, three columns, at least 256 pixels each"
    assert out["mean"]["psnr"] == pytest.approx(np.mean([row["psnr"] for row in out["images"]]))

    r = run(cli, ["eval", str(inst), str(pairs_dir), "--csv", "--steps", "2", "--no-clip"])
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["name", "psnr", "ssim"] and rows[-1][0] == "mean" and len(rows) == 5

    r = run(cli, ["eval", str(inst), str(pairs_dir), "--steps", "2", "--sheet", str(sheet)])
    assert r.exit_code == 1 and "already exists" in r.output
