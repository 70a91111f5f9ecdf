"""``invert encoder train``: learn an edit encoder, pairs -> instruction in one forward pass (issue 30)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from invert.defaults import DEFAULT_MODEL
from invert.methods import settings_classes
from invert.settings import FitSettings
from invert.settings.encoder import ENCODER_FIT_DEFAULTS, EncoderSettings
from invert.writing import output_exists

from .common import announce_stop, check_output, process_device, quiet_option, saved, user_errors
from .fit import CLIP_MODEL_HELP
from .options import config_option, given_settings, method_option, model_options, settings_options

# The fit's settings an encoder trains with (its loss's guidance) besides the method's own options.
FIT_OPTIONS = {"guidance", "image_guidance", "mse_weight", "resolution"}
OPTION_NAMES = {f for cls in (EncoderSettings, FitSettings, *settings_classes().values())
                for f in cls.__dataclass_fields__}


@click.group()
def encoder():
    """Edit encoders: exemplar pairs -> an instruction in one forward pass ('invert encode'), and a closer start for
    fits ('invert fit --init encoder:FILE')."""


@encoder.command("train")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The encoder file to write (safetensors), also every --save-every steps.")
@click.option("--data", default="toy", show_default=True,
              help="toy: the toy world's catalogue edits, composed and at random strengths (its hard edits held out); "
                   "or a folder of pair sets, one edit per subfolder (fit-batch's layout), each of 2 pairs or more.")
@method_option
@settings_options(EncoderSettings)
@settings_options(FitSettings, only=FIT_OPTIONS)
@click.option("--loss-target", type=click.Choice(["cond", "cfg"]), default=ENCODER_FIT_DEFAULTS["loss_target"],
              show_default=True, help="The fit's loss on the instruction's own prediction (cond) or on the "
              "guidance-combined one (cfg, the library's default for a fit): on the toy model the cfg loss is "
              "lowest for no edit at all, and an encoder trained on it learns to edit less.")
@settings_options(*settings_classes().values())
@click.option("--clip-model", default=None, help=CLIP_MODEL_HELP)
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue a stopped training from its state (OUTPUT.ckpt, written every --save-every steps and on "
                   "Ctrl-C or SIGTERM); give the same arguments otherwise.")
@quiet_option
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@model_options(DEFAULT_MODEL)
@config_option
@click.pass_context
@user_errors
def train(ctx, output, data, method, clip_model, resume, quiet, force, model, device, dtype, **values):
    """Train an edit encoder for --method on the model, end to end through the frozen editor with the fit's own loss:
    each step encodes some pairs of random edits and takes the loss on other pairs of the same edits.

    Under torchrun or accelerate launch each process trains on its own edits and the gradients are averaged (one
    GPU per process); process 0 writes.

    \b
      invert encoder train -o visii.safetensors --model toy --steps 2000
      invert encoder train -o enc.safetensors --data sets/ --method brush --brush-parts 1
      torchrun --nproc-per-node 4 -m invert.cli encoder train -o enc.safetensors --data sets/
    """
    import invert.api
    from invert.backbones import load_editor
    from invert.clip import clip_name_for, load_clip
    from invert.encoder.data import training_data
    from invert.encoder.training import EncoderTrainer
    from invert.fitting.checkpoint import FitState, FitStopped
    from invert.methods import settings_for
    from invert.settings import build_settings
    from invert.settings.fields import flag

    given = given_settings(ctx, {k: v for k, v in values.items() if k in OPTION_NAMES})
    encoder_values = {k: values[k] for k in EncoderSettings.__dataclass_fields__}
    fit_values = {k: v for k, v in given.items() if k not in EncoderSettings.__dataclass_fields__}
    settings = build_settings(EncoderSettings, encoder_values, flag)
    fit_settings, method_settings = settings_for(method, {**invert.api.model_defaults(model, method, fit_values),
                                                          **ENCODER_FIT_DEFAULTS, **fit_values})
    state_path = output.with_name(f"{output.name}.ckpt")
    # A resumed run may overwrite the OUTPUT its stopped run wrote at --save-every (its state is OUTPUT.ckpt), never
    # another file without --force; and its folder is checked (or made) now, not after the training.
    check_output(output, force or (resume is not None and resume.resolve() == state_path.resolve()))
    output_exists(state_path)  # a name past the file system's limit is refused now, not when a state would be lost
    episodes = training_data(data)
    editor = load_editor(model, process_device(device), dtype)
    clip = load_clip(clip_name_for(clip_model, editor.model_id), editor.device)
    trainer = EncoderTrainer(editor, clip, method, fit_settings, method_settings, settings, episodes)

    def checkpoint(result, state):
        result.save(output, force=True)
        state.save(state_path)

    from .signals import stop_on_signals

    with stop_on_signals(announce_stop) as stop:
        try:
            result = trainer.run(quiet=quiet, resume=FitState.load(resume) if resume else None, should_stop=stop,
                                 checkpoint=checkpoint)
        except FitStopped as stopped:
            if not trainer.processes.main:
                raise SystemExit(1) from None
            raise saved(stopped, state_path, stop.signum) from None
    if trainer.processes.main:
        result.save(output, force=True)
        training = result.info["training"]
        click.echo(f"wrote {output} ({method} encoder, {training['steps']} steps, loss {training['final_loss']:.4f}, "
                   f"{training['seconds']:.0f} s)", err=quiet)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        import torch.distributed

        torch.distributed.destroy_process_group()
