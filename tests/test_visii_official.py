"""invert's VISII loop against an independent transcription of the official training step
(benchmarks/visii_official.py), and the official clip-by-value rule on a hand-made gradient."""
import importlib.util

import pytest
import torch
from conftest import GUIDANCE_GAIN, float_noise, make_trainer, scene

from benchmarks.visii_official import OFFICIAL_LOSS_SCALE, OfficialOptions, OfficialVisii, clip_gradient, clip_value
from invert.errors import InvertError
from invert.fitting.losses import clip_direction
from invert.methods.visii import Visii

STEPS = 10


@pytest.fixture(scope="module")
def fitted(editor, clip):
    """Ten steps of invert's loop (lr 1e-3, CLIP weight 0.1, guided "cfg" loss) on one pair, and what the oracle
    needs to repeat them: the same init embedding, timesteps, noises and encodings."""
    befores, afters = [scene(0)], [scene(0, night=True)]
    init = editor.encode_text(["make it night"])
    method = Visii.initialize(editor, init, "make it night")  # CLIP weight 0.1, clamp 0.5: the defaults
    trainer = make_trainer(editor, befores, afters, method, steps=STEPS, lr=1e-3, loss_target="cfg")
    direction = clip_direction(clip, befores, afters)
    method.set_clip_direction(clip, direction)
    losses: list[float] = []
    trainer.run(quiet=True, progress=lambda p: losses.append(p.loss))  # on the CPU: after every step
    return dict(trainer=trainer, init=init, method=method, direction=direction, losses=torch.tensor(losses),
                clip=clip)


def oracle(editor, fitted, **changes):
    """The official step with invert's optimizer and no clipping, on ``fitted``'s inputs."""
    data, init = fitted["trainer"].data, fitted["init"]
    options = OfficialOptions(**{"lr": 1e-3, "grad_clip": "none", "optimizer": "adamw", **changes})
    run = OfficialVisii(editor.unet, editor.scheduler.config, init.embeds, init.eos[0], data.uncond.embeds, data.cond,
                        data.target, fitted["trainer"].schedule[:, 0], data.noises, fitted["clip"].project_text,
                        fitted["direction"], options)
    return run.run()


def tolerances(fitted):
    # Losses: invert runs the text row apart from the two others, the oracle all three in one UNet batch, so
    # they differ by kernel and batch shape only; guidance amplifies a row's error up to GUIDANCE_GAIN times and
    # squaring doubles a relative error. Embeddings: AdamW's step is lr times a ratio of moments, so a relative
    # gradient error of ~1e-4 moves ten steps of lr 1e-3 by ~1e-6, far below 64 ulps of the embedding's scale.
    return (float_noise(fitted["losses"], gain=2 * GUIDANCE_GAIN),
            float_noise(fitted["init"].embeds))


def test_invert_loop_equals_the_official_step_without_clipping_and_with_plain_adamw(editor, fitted):
    """On one pair the official pairing (timestep t uses pair t % n) and invert's (step s uses pair s % n) agree;
    with more pairs they assign pairs to timesteps differently. The official run clips loss-scaled gradients
    and uses AdamW8bit (compared in invert/bench/visii_clip_rules.py); here the oracle runs without either."""
    result = oracle(editor, fitted)
    method = fitted["method"]
    # invert clips unscaled gradients at the learned tokens' largest |entry|: "none" is the same run only if
    # that rule changed nothing.
    invert_clip = float(fitted["init"].embeds[0, 1:method.eos].abs().max())
    assert max(r.grad_max for r in result.records) < invert_clip, "invert's clip was active: compare with 'abs'"
    loss_tol, embed_tol = tolerances(fitted)
    torch.testing.assert_close(torch.tensor(result.losses), fitted["losses"], rtol=0, atol=loss_tol)
    # The whole prompt row: the learned positions, and BOS, EOS and padding restored to the init encoding.
    torch.testing.assert_close(result.final, method.prompt_embeds().detach(), rtol=0, atol=embed_tol)
    assert not torch.equal(result.final, fitted["init"].embeds), "the fit must have moved the embedding"


def test_the_parity_tolerances_separate_a_real_difference(editor, fitted):
    """Controls: dropping the CLIP term or AdamW's weight decay in the oracle must break the comparison."""
    loss_tol, embed_tol = tolerances(fitted)
    no_clip = oracle(editor, fitted, clip_weight=0.0)
    assert (torch.tensor(no_clip.losses) - fitted["losses"]).abs().max() > 3 * loss_tol
    no_decay = oracle(editor, fitted, weight_decay=0.0)
    assert (no_decay.final - fitted["method"].prompt_embeds().detach()).abs().max() > 3 * embed_tol


def test_official_clip_rule_on_a_hand_made_gradient():
    # An init batch whose signed maximum (2.0, in an unconditional row) is smaller than its largest |entry|
    # (-5.0, at BOS) and than the learned tokens' largest |entry| (-3.0).
    orig = torch.zeros(3, 77, 4)
    orig[0, 0, 0] = -5.0
    orig[0, 1, 1] = -3.0
    orig[1, 7, 2] = 2.0
    eos = 3
    assert clip_value("official", orig, eos) == 2.0
    assert clip_value("abs", orig, eos) == 3.0
    assert clip_value("none", orig, eos) is None

    learned = torch.zeros_like(orig, dtype=torch.bool)
    learned[0, 1:eos] = True
    grad = torch.zeros_like(orig)
    grad[0, 1, :] = torch.tensor([1e-3, -1e-5, 2e-5, 0.0])  # true gradients of the learned tokens
    grad[2, 5, 0] = -1e-6
    # Officially the clip sees the gradients times the loss scale: 1e-3, -1e-5 and 2e-5 become 65.5, -0.66 and
    # 1.31, so only the first exceeds the threshold 2.0.
    scaled = grad * OFFICIAL_LOSS_SCALE
    expected = scaled.clamp(-2.0, 2.0)
    fraction, fraction_all = clip_gradient(scaled, 2.0, learned)
    assert torch.equal(scaled, expected)
    assert scaled[0, 1, 0] == 2.0 and scaled[0, 1, 1] == pytest.approx(-1e-5 * OFFICIAL_LOSS_SCALE)
    assert fraction == 1 / (2 * 4)  # one of the 2 learned positions x 4 entries
    assert fraction_all == pytest.approx(1 / orig.numel())
    # The same gradient unscaled under invert's rule: nothing reaches 3.0, nothing changes.
    unscaled = grad.clone()
    assert clip_gradient(unscaled, 3.0, learned) == (0.0, 0.0)
    assert torch.equal(unscaled, grad)


def test_adamw8bit_without_bitsandbytes_is_a_clear_error(editor, fitted):
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    with pytest.raises(InvertError, match="pip install bitsandbytes"):
        oracle(editor, fitted, optimizer="adamw8bit")


def test_official_run_with_adamw8bit_learns_only_the_tokens_between_bos_and_eos(editor, fitted):
    pytest.importorskip("bitsandbytes")
    result = oracle(editor, fitted, optimizer="adamw8bit", grad_clip="official")
    init, eos = fitted["init"].embeds, fitted["init"].eos[0]
    assert torch.equal(result.final[:, :1], init[:, :1]) and torch.equal(result.final[:, eos:], init[:, eos:])
    assert (result.final[0, 1:eos] != init[0, 1:eos]).any(dim=-1).all()
    assert min(result.clipped) > 0.5, "loss-scaled gradients exceed the official threshold almost everywhere"


def test_official_mode_equals_the_official_step(editor, clip):
    """invert in official mode (the official code's clip on loss-scaled gradients, its pairing of timestep t with
    pair t mod n, its best step kept) against the transcription, on two pairs, with plain AdamW (bitsandbytes is
    not installed in CI; the optimizer choice is the only official setting not compared here)."""
    befores, afters = [scene(0), scene(1)], [scene(0, night=True), scene(1, night=True)]
    init = editor.encode_text(["make it night"])
    method = Visii.initialize(editor, init, "make it night")
    trainer = make_trainer(editor, befores, afters, method, steps=STEPS, lr=1e-3, loss_target="cfg",
                           grad_clip="official", keep="best-mse", pair_order="timestep")
    direction = clip_direction(clip, befores, afters)
    method.set_clip_direction(clip, direction)
    losses: list[float] = []
    data = trainer.data
    run = OfficialVisii(editor.unet, editor.scheduler.config, init.embeds, init.eos[0], data.uncond.embeds, data.cond,
                        data.target, trainer.schedule[:, 0], data.noises, clip.project_text, direction,
                        OfficialOptions(lr=1e-3, grad_clip="official", optimizer="adamw"))
    result = run.run()
    trainer.run(quiet=True, progress=lambda p: losses.append(p.loss))
    assert min(result.clipped) > 0.5, "the official clip acts on most entries"
    loss_tol = float_noise(torch.tensor(losses), gain=2 * GUIDANCE_GAIN)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(result.losses), rtol=0, atol=loss_tol)
    # Clipped entries are exactly +-threshold in both; Adam then moves every entry by about lr per step.
    assert trainer.best_step == result.best_step + 1, "the kept step (steps done) is the official best step"
    torch.testing.assert_close(method.prompt_embeds().detach(), result.best, rtol=0,
                               atol=float_noise(init.embeds))
