"""The official VISII code's behaviours as options (--official and each on its own), the paper's fixed noise and
InstructBrush's Karras sampler, on the tiny model."""
import numpy as np
import pytest
import torch
from conftest import scene, stop_at, tiny_fit

import invert
from invert.errors import InvertError
from invert.fitting.checkpoint import FitState, FitStopped
from invert.fitting.loop import OFFICIAL_LOSS_SCALE, GradientClip
from invert.methods import settings_for
from invert.backbones.ip2p_sampling import FitNoise, make_scheduler, set_timesteps
from invert.schedules import draw_noises
from invert.settings import OFFICIAL


def night(n=2):
    return [scene(i) for i in range(n)], [scene(i, night=True) for i in range(n)]


def test_official_preset_sets_every_official_option_and_given_options_win():
    fit, visii = settings_for("visii", {"official": True, "steps": 7})
    assert fit.steps == 7 and fit.grad_clip == "official" and fit.optimizer == "adamw8bit"
    assert (fit.keep, fit.pair_order, fit.init, fit.pez_steps) == ("best-mse", "timestep", "pez", 3000)
    assert visii.visii_clip_weight == OFFICIAL["visii_clip_weight"]
    with pytest.raises(InvertError, match="brush has no official code"):
        settings_for("brush", {"official": True})


def test_official_clip_scales_the_gradient_then_clips_at_the_signed_max():
    clip = GradientClip(2.0, OFFICIAL_LOSS_SCALE)
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([1e-3, -1e-5, 2e-5, -1.0])
    clip([p])
    assert p.grad.tolist() == pytest.approx([2.0, -1e-5 * 2**16, 2e-5 * 2**16, -2.0])
    p.grad = torch.tensor([1e-3, -1e-5, 2e-5, -1.0])
    GradientClip(0.5)([p])  # abs: unscaled
    assert p.grad.tolist() == pytest.approx([1e-3, -1e-5, 2e-5, -0.5])


def test_each_official_option_changes_the_fit(editor, clip):
    base = dict(steps=4, lr=1e-2, init_text="make it night")
    plain = tiny_fit(editor, *night(), "visii", clip=clip, **base)
    for option in ({"grad_clip": "official"}, {"pair_order": "timestep"}):  # abs never clips on this model
        other = tiny_fit(editor, *night(), "visii", clip=clip, **base, **option)
        assert not torch.equal(other.tensors["visii.learned"], plain.tensors["visii.learned"]), option
    best = tiny_fit(editor, *night(), "visii", clip=clip, **base, keep="best-mse")
    assert 1 <= best.meta.kept_step <= 4 and best.meta.options["keep"] == "best-mse"


def test_keep_best_mse_resumes_to_the_uninterrupted_result(editor, clip, tmp_path):
    base = dict(steps=6, lr=1e-2, init_text="make it night", keep="best-mse", grad_clip="official")
    whole = tiny_fit(editor, *night(), "visii", clip=clip, **base)
    with pytest.raises(FitStopped) as stopped:
        tiny_fit(editor, *night(), "visii", clip=clip, **stop_at(3), **base)
    saved = stopped.value.state.save(tmp_path / "state.ckpt")
    resumed = tiny_fit(editor, *night(), "visii", clip=clip, resume=FitState.load(saved), **base)
    assert torch.equal(whole.tensors["visii.learned"], resumed.tensors["visii.learned"])
    assert whole.meta.kept_step == resumed.meta.kept_step


def test_pez_init_gives_a_prompt_of_the_clip_vocabulary(editor, clip):
    inst = tiny_fit(editor, *night(), "visii", clip=clip, steps=0, init="pez", pez_steps=5, pez_tokens=3)
    assert inst.meta.init_text and inst.meta.options["init"] == "pez"
    again = tiny_fit(editor, *night(), "visii", clip=clip, steps=0, init="pez", pez_steps=5, pez_tokens=3)
    assert again.meta.init_text == inst.meta.init_text, "seeded"


def test_fit_noise_is_the_fits_noise_of_each_timestep(editor):
    noise = FitNoise(9, (2, 4, 16, 16), editor)
    drawn = draw_noises(9, (1, 4, 16, 16), 1000, editor.device, editor.dtype)
    assert torch.equal(noise.at(torch.tensor(999.2)), drawn[999:1000].expand(2, -1, -1, -1))
    assert torch.equal(noise.at(torch.tensor(10)), drawn[10:11].expand(2, -1, -1, -1))


def test_noise_modes(editor):
    inst = tiny_fit(editor, *night(1), "visii", steps=2, init_text="make it night", seed=4)
    image = scene(5)
    out = {mode: np.asarray(invert.apply(inst, image, editor=editor, steps=3, noise=mode)) for mode in ("stream", "fit")}
    out["fresh"] = np.asarray(invert.apply(inst, image, editor=editor, steps=3, noise="fresh", seed=4))
    out["seed"] = np.asarray(invert.apply(inst, image, editor=editor, steps=3, seed=4))
    assert np.array_equal(out["stream"], out["fresh"]), "the stream of the fit's seed is fresh noise of that seed"
    assert np.array_equal(out["seed"], out["fresh"]), "a seed means fresh noise, in the library as in the CLI"
    assert not np.array_equal(out["fit"], out["stream"])
    for mode in ("stream", "fit"):  # a seed that would be ignored is refused
        with pytest.raises(InvertError, match=f"option 'seed' draws fresh noise, but option 'noise' {mode} uses"):
            invert.apply(inst, image, editor=editor, steps=3, noise=mode, seed=123)
    with pytest.raises(InvertError, match="option 'noise': choose from stream, fit, fresh; not 'pink'"):
        invert.apply(inst, image, editor=editor, steps=1, noise="pink")


def test_euler_ancestral_on_karras_sigmas(editor):
    from diffusers import EulerDiscreteScheduler

    sched = make_scheduler(editor, "euler_a_karras")
    set_timesteps(editor, sched, "euler_a_karras", 10)
    karras = EulerDiscreteScheduler.from_config(editor.scheduler.config, use_karras_sigmas=True)
    karras.set_timesteps(10)
    assert torch.equal(sched.sigmas, karras.sigmas) and torch.equal(sched.timesteps, karras.timesteps)
    plain = make_scheduler(editor, "euler_a")
    set_timesteps(editor, plain, "euler_a", 10)
    assert not torch.equal(plain.sigmas, sched.sigmas)
    inst = tiny_fit(editor, *night(1), "visii", steps=0, init_text="make it night")
    assert invert.apply(inst, scene(3), editor=editor, steps=4, scheduler="euler_a_karras").size == (32, 32)
