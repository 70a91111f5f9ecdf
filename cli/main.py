"""The ``invert`` command: a thin Click layer over the ``invert`` library."""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

import invert
from invert.defaults import DEFAULT_MODEL, DEFAULT_TEMPERATURE, SCHEDULERS
from invert.errors import InvertError, InvertWarning
from invert.signals import stop_on_signals

if TYPE_CHECKING:
    from invert.checkpoint import FitStopped

MODEL_HELP = "Base IP2P: hub id, local diffusers folder, or 'toy'."


OUT_OF_MEMORY = "out of GPU memory; try --low-memory or a smaller --resolution"


def user_errors(fn):
    """Turn library errors (and running out of GPU memory) into one-line Click errors with a non-zero exit, and
    the library's warnings into one-line 'warning:' messages."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("always", InvertWarning)  # one per file, even when the text repeats
            warnings.showwarning = _show_warning
            try:
                return fn(*args, **kwargs)
            except InvertError as exc:
                raise click.ClickException(str(exc)) from None
            except Exception as exc:
                torch = sys.modules.get("torch")  # imported by then if it ran out of memory
                if torch is None or not isinstance(exc, torch.OutOfMemoryError):
                    raise
                detail = (str(exc) or "OutOfMemoryError").splitlines()[0]
                raise click.ClickException(f"{OUT_OF_MEMORY} ({detail})") from None

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, InvertWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def model_options(default_model: str | None):
    def decorate(fn):
        fn = click.option("--dtype", default="auto", show_default=True, envvar="INVERT_DTYPE",
                          type=click.Choice(["auto", "fp32", "fp16", "bf16"]), help="auto: fp16 on cuda, fp32 on cpu.")(fn)
        fn = click.option("--device", default="auto", show_default=True, envvar="INVERT_DEVICE",
                          help="auto, cuda, cuda:1, mps or cpu.")(fn)
        fn = click.option("--model", default=default_model, show_default=default_model is not None,
                          envvar="INVERT_MODEL", help=MODEL_HELP + (" Default: the one recorded in the file."
                                                                    if default_model is None else ""))(fn)
        return fn

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(invert.__version__, prog_name="invert")
def cli():
    """Learn an image-editing instruction from before/after pairs and apply it to new images.

    \b
      invert fit pairs/ -o sketch.inst                 # learn an instruction
      invert apply sketch.inst photo.jpg -o out/       # use it
      invert apply sketch.inst photo.jpg -o out/ --text "at night"
      invert inspect sketch.inst
      invert phrases pairs/
    """
    # Loading bars and library warnings would bury invert's own one-line messages.
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def phrase_options(fn):
    for option in reversed([
        click.option("--vocab", multiple=True,
                     help="Phrase lists: default, toy, flavors, mediums, movements, artists, or a .txt file "
                          "(repeatable). Default: the model folder's vocab.txt if it has one, else 'default'."),
        click.option("--top", default=5, show_default=True, type=click.IntRange(min=1),
                     help="brush init: phrases kept per image."),
        click.option("--threshold", default=0.15, show_default=True, type=float,
                     help="brush init: drop a side whose |sensitivity| is below this."),
        click.option("--relative-threshold", is_flag=True,
                     help="brush init: --threshold in units of the similarities' spread over the vocabulary."),
        click.option("--template", default="turn {p_x} into {p_y}", show_default=True,
                     help="brush init: the instruction template."),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("pairs", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .inst file to write.")
@click.option("--before", type=click.Path(path_type=Path), help="A single pair: the before image ...")
@click.option("--after", type=click.Path(path_type=Path), help="... and the after image.")
@click.option("--method", default="visii", show_default=True, type=click.Choice(["visii", "brush", "lora"]),
              help="visii: learned prompt embedding; brush: InstructBrush's time-aware cross-attention K/V; lora: "
                   "a LoRA of change on the UNet's attention projections.")
@click.option("--reverse", is_flag=True, help="Also learn the inverse edit (after -> before) with a cycle term, "
              "stored in the same file for 'apply --reverse' (for lora: the negated adapter).")
@click.option("--cycle-weight", default=1.0, show_default=True, type=float, help="--reverse: weight of the cycle term.")
@click.option("--lora-rank", default=4, show_default=True, type=click.IntRange(min=1), help="lora: adapter rank.")
@click.option("--lora-alpha", default=None, type=click.FloatRange(min=0, min_open=True),
              help="lora: scale numerator (scale = alpha / rank); default: the rank.")
@click.option("--lora-targets", default="to_q,to_k,to_v,to_out.0", show_default=True,
              help="lora: comma-separated UNet module names the adapter goes on.")
@click.option("--lora-reverse", default="swap", show_default=True, type=click.Choice(["swap", "both", "off"]),
              help="lora: LoRA Reverse, -Delta editing after -> before: pair order exchanged at random each step "
                   "(swap), both directions every step, or off.")
@click.option("--parts", default=5, show_default=True, type=click.IntRange(min=1),
              help="brush: time parts, each with its own K/V.")
@click.option("--parts-sequential", is_flag=True,
              help="brush: train the parts one after another (the paper's schedule) instead of in one batch.")
@click.option("--tokens", default=None, type=click.IntRange(min=1),
              help="Token positions learned for an empty --init-text (default 10); brush: also to override the "
                   "init text's token count.")
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Optimization steps; 0 writes the initialization unchanged.")
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the noise and the timestep order.")
@click.option("--resolution", default=None, type=click.IntRange(min=8),
              help="Square size the exemplars are brought to; default: the model's own (512 for IP2P, 32 for toy).")
@click.option("--init-text", default=None, help="Initial instruction; default: a CLIP-ranked caption of the afters.")
@phrase_options
@click.option("--loss-target", default="cfg", show_default=True, type=click.Choice(["cfg", "cond"]),
              help="cfg: the guidance-combined prediction, as official VISII; cond: the text row only (3x cheaper).")
@click.option("--guidance", default=7.5, show_default=True, type=float, help="Text guidance, in training and apply.")
@click.option("--image-guidance", default=1.5, show_default=True, type=float)
@click.option("--mse-weight", default=4.0, show_default=True, type=float)
@click.option("--clip-weight", default=0.1, show_default=True, type=float, help="CLIP direction loss; 0 turns it off.")
@click.option("--clip-clamp", default=0.5, show_default=True, type=float)
@click.option("--clip-model", default=None, help="transformers CLIP (hub id or folder) or open_clip:ARCH/TAG; "
              "default: the model folder's clip/ if it has one, else openai/clip-vit-large-patch14.")
@click.option("--save-every", default=0, type=click.IntRange(min=0), help="Write OUTPUT.step-N.inst every N steps.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue a stopped fit from the state it saved "
              "(OUTPUT.ckpt, written on Ctrl-C, SIGTERM or divergence); give the same arguments otherwise.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--low-memory", is_flag=True, help="Gradient checkpointing and VAE slicing: less memory, slower.")
@model_options(DEFAULT_MODEL)
@user_errors
def fit(pairs, output, before, after, method, lora_rank, lora_alpha, lora_targets, lora_reverse, parts,
        parts_sequential, tokens, save_every, resume, quiet, force, model, device, dtype, clip_model, vocab, **options):
    """Learn an instruction from exemplar PAIRS and write it to OUTPUT.

    PAIRS is a folder with before/ and after/ subfolders (files matched by stem), or a folder of
    NAME_before.EXT / NAME_after.EXT files; or give one pair with --before and --after.

    \b
      invert fit pairs/ -o sketch.inst
      invert fit --before a.jpg --after b.jpg -o sketch.inst --steps 500
      invert fit pairs/ -o sketch.inst --method brush --threshold 1 --relative-threshold
      invert fit pairs/ -o sketch.inst --method lora --lora-rank 8 --reverse
    """
    from invert.checkpoint import FitStopped

    _check_output(output, force)  # before any work, not after the fit
    found = invert.find_pairs(pairs, before, after)

    def checkpoint(inst, step):
        inst.save(output.with_name(f"{output.stem}.step-{step}.inst"), force=True)

    options["method_options"] = {"tokens": tokens}
    if method == "brush":
        options["method_options"].update(parts=parts, sequential=parts_sequential)
    if method == "lora":
        targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
        options["method_options"] = {"rank": lora_rank, "alpha": lora_alpha, "targets": targets,
                                     "reverse": lora_reverse}
    state_path = output.with_name(f"{output.name}.ckpt")
    with stop_on_signals(_stopping) as stop:
        try:
            inst = invert.fit(found, method, model=model, device=device, dtype=dtype, clip_model=clip_model,
                              quiet=quiet, save_every=save_every, checkpoint=checkpoint, vocab=tuple(vocab) or None,
                              resume=resume, should_stop=stop, **options)
        except FitStopped as stopped:
            raise _saved(stopped, state_path, stop.signum) from None
    inst.save(output, force=force)
    click.echo(f"wrote {output} ({inst.method}, init text {inst.meta['init_text']!r}, "
               f"loss {inst.meta.get('final_loss')}, {float(inst.meta['fit_seconds']):.1f} s)", err=quiet)


def _stopping(signum: int) -> None:
    click.echo(f"\n{signal.Signals(signum).name}: saving the fit's state after this step (again: stop at once, "
               "saving nothing)", err=True)


def _saved(stopped: FitStopped, path: Path, signum: int | None) -> click.ClickException:
    """Write a stopped fit's state and say how to resume it; a signal's exit status is 128 + its number."""
    from invert.checkpoint import FitDiverged

    stopped.state.save(path)
    error = click.ClickException(f"{stopped}; saved the state to {path}: run the same command with "
                                 f"--resume {path} to continue")
    if signum is not None and not isinstance(stopped, FitDiverged):
        error.exit_code = 128 + signum
    return error


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InvertError(f"{path}: already exists (use --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvertError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK):
        raise InvertError(f"{parent}: output folder is not writable")


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _inputs(paths: list[Path]) -> list[Path]:
    from invert.pairs import is_image_file

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if is_image_file(f))
        elif p.is_file():
            files.append(p)
        else:
            raise InvertError(f"{p}: no such file or folder")
    if not files:
        raise InvertError(f"no images found in {', '.join(map(str, paths))}")
    return files


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output folder (results keep the input's stem), or an image file for a single input.")
@click.option("--mix", default=None, help="Weights for several .inst files, e.g. 0.7,0.3: a weighted sum of their "
              "learned parameters (same method and base model).")
@click.option("--library", "library_file", type=click.Path(path_type=Path), default=None,
              help="Edit with an instruction library (invert library build) instead of .inst files: its instructions "
                   "mixed by how well their keys match the CLIP direction of the --before/--after pairs. No fitting.")
@click.option("--before", "befores", multiple=True, type=click.Path(path_type=Path),
              help="--library: an exemplar before image (repeatable; paired in order with --after).")
@click.option("--after", "afters", multiple=True, type=click.Path(path_type=Path),
              help="--library: an exemplar after image.")
@click.option("--temperature", default=DEFAULT_TEMPERATURE, show_default=True, type=float,
              help="--library: softmax temperature over the key cosines; lower mixes fewer instructions.")
@click.option("--top", default=None, type=click.IntRange(min=1), help="--library: mix only the K best matches.")
@click.option("--method", default=None, help="--library: which method's instructions to mix (when it holds several).")
@click.option("--text", default=None, help="Extra instruction text after the learned one (a hybrid instruction).")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--guidance", default=None, type=float, help="Text guidance; default: the file's.")
@click.option("--image-guidance", default=None, type=float, help="Image guidance; default: the file's.")
@click.option("--seed", default=0, show_default=True, type=int, help="Noise seed with --fresh-noise.")
@click.option("--fresh-noise", is_flag=True, help="Draw new noise from --seed instead of the fit's stored noise.")
@click.option("--scheduler", default=None, type=click.Choice(list(SCHEDULERS)),
              help="Sampler; default: the model's own (Euler ancestral for IP2P).")
@click.option("--strength", default=1.0, show_default=True, type=float,
              help="Scale of the learned change: 0 = the init text, 1 = learned, >1 extrapolates.")
@click.option("--reverse", is_flag=True, help="Undo the edit: the reverse instruction of a fit with --reverse "
              "(a lora instruction's negated adapter).")
@click.option("--resolution", default=None, type=click.IntRange(min=8),
              help="Resize and centre-crop inputs to this square size; default: keep the size (rounded down to 8).")
@click.option("--grid", is_flag=True, help="Also write STEM_grid.png: exemplar pair | input | result.")
@click.option("--allow-model-mismatch", is_flag=True, help="Use an instruction learned on other base weights.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--keep-going", is_flag=True, help="Skip inputs that fail (unreadable, output exists) and edit the "
              "others; list the failures at the end (the exit status is still non-zero).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Images per sampling batch (same-size images only); results do not depend on it (up to one level of rounding).")
@click.option("--low-memory", is_flag=True, help="VAE slicing: less memory, slower.")
@model_options(None)
@user_errors
def apply(inputs, output, mix, text, steps, guidance, image_guidance, seed, fresh_noise, scheduler,
          strength, reverse, resolution, grid, allow_model_mismatch, force, keep_going, batch_size, low_memory, model, device,
          dtype, library_file, befores, afters, temperature, top, method):
    """Edit images with a learned instruction: INPUTS are one or more .inst files, then image files or folders.

    \b
      invert apply sketch.inst photo.jpg -o photo_sketch.png
      invert apply sketch.inst photos/ -o out/ --text "at night"
      invert apply sketch.inst photo.jpg -o out/ --fresh-noise --seed 3 --grid
      invert apply a.inst b.inst photo.jpg -o out/ --mix 0.7,0.3
      invert apply sketch.inst result.png -o undone.png --reverse
      invert apply --library lib.safetensors --before a.jpg --after b.jpg photo.jpg -o out/
    """
    from invert.batch import Failures, output_name
    from invert.instruction import Instruction, mix as mix_instructions
    from invert.pairs import fit_to_resolution, open_image

    inst_paths = [p for p in inputs if p.suffix == ".inst"]
    images = [p for p in inputs if p.suffix != ".inst"]
    editor = None
    if library_file is not None or befores or afters:
        from .library import instruction_from_library

        editor, inst = instruction_from_library(library_file, inst_paths, images, mix, befores, afters, method,
                                                temperature, top, model, device, dtype, allow_model_mismatch)
    elif not inst_paths or not images:
        raise InvertError("give one or more .inst files followed by images or folders")
    else:
        loaded = [Instruction.load(p) for p in inst_paths]
        if len(loaded) > 1 or mix:
            try:
                weights = [float(w) for w in (mix or "").split(",")] if mix else [1 / len(loaded)] * len(loaded)
            except ValueError:
                raise InvertError(f"--mix {mix!r}: expected comma-separated numbers such as 0.7,0.3") from None
            inst = mix_instructions(loaded, weights)
        else:
            inst = loaded[0]
    files = _inputs(images)
    single_file = output.suffix.lower() in IMAGE_SUFFIXES
    if single_file and len(files) > 1:
        raise InvertError(f"{output}: one output file for {len(files)} images; give a folder")
    targets = [output] if single_file else [output / output_name(f) for f in files]
    if len({t.name.casefold() for t in targets}) != len(targets):  # casefold: macOS and Windows ignore case
        raise InvertError("two inputs share a file stem; their results would overwrite each other")
    if not single_file:
        _make_folder(output)
    failures = Failures(keep_going, lambda line: click.echo(line, err=True))
    opened, kept = [], []
    for f, target in zip(files, targets):
        with failures.record():
            _check_output(target, force)
            img = open_image(f)
            opened.append(fit_to_resolution(img, resolution) if resolution else img)
            kept.append(target)
    results = invert.apply(inst, opened, editor=editor, model=model, device=device, dtype=dtype, text=text,
                           steps=steps, guidance=guidance, image_guidance=image_guidance, seed=seed,
                           fresh_noise=fresh_noise, scheduler=scheduler, strength=strength,
                           allow_model_mismatch=allow_model_mismatch, batch_size=batch_size, low_memory=low_memory,
                           reverse=reverse) if opened else []
    from invert.grid import save_image, preview_grid

    for src, img, target in zip(opened, results, kept):
        with failures.record():
            save_image(img, target, force)
            click.echo(f"wrote {target}")
            if grid:
                grid_path = target.with_name(f"{target.stem}_grid.png")
                save_image(preview_grid(inst, src, img), grid_path, force)
                click.echo(f"wrote {grid_path}")
    summary = failures.summary(len(files))
    if summary:
        raise InvertError(summary)


def _make_folder(folder: Path) -> None:
    """Create the output folder before any work, so that a bad one costs no model time."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvertError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None


@cli.command()
@click.argument("pairs", required=False, type=click.Path(path_type=Path))
@click.option("--before", type=click.Path(path_type=Path), help="A single pair: the before image ...")
@click.option("--after", type=click.Path(path_type=Path), help="... and the after image.")
@phrase_options
@click.option("--resolution", default=512, show_default=True, type=click.IntRange(min=8))
@click.option("--clip-model", default=None, help="As for fit; default: openai/clip-vit-large-patch14.")
@click.option("--model", default=None, envvar="INVERT_MODEL",
              help="Use this base model folder's own clip/ (as the toy model has) when --clip-model is not given.")
@click.option("--device", default="auto", show_default=True, envvar="INVERT_DEVICE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def phrases(pairs, before, after, vocab, top, threshold, relative_threshold, template, resolution, clip_model, model,
            device, as_json):
    """Rank vocabulary phrases for exemplar PAIRS and show InstructBrush's initial instruction.

    \b
      invert phrases pairs/
      invert phrases pairs/ --vocab default --vocab mediums --threshold 1 --relative-threshold --json
    """
    from invert.clip import clip_name_for, load_clip
    from invert.editor import resolve_device
    from invert.pairs import load_pairs
    from invert.phrases import unique_phrases
    from invert.vocab import load_vocab, model_vocab

    befores, afters = load_pairs(invert.find_pairs(pairs, before, after), resolution)
    clip = load_clip(clip_name_for(clip_model, model), resolve_device(device))
    choice = unique_phrases(clip, befores, afters, load_vocab(vocab or model_vocab(model)), top, threshold, relative_threshold, template)
    if as_json:
        click.echo(json.dumps({"init_text": choice.text, "p_x": choice.p_x, "p_y": choice.p_y,
                               "score_x": choice.score_x, "score_y": choice.score_y,
                               "threshold": threshold, "relative": relative_threshold,
                               "candidates": choice.candidates}, indent=2))
        return
    unit = " (x spread)" if relative_threshold else ""
    for side in ("after", "before"):
        click.echo(f"{side} candidates (sensitivity = mean sim to afters - to befores; relative = in spreads):")
        for c in (c for c in choice.candidates if c["side"] == side):
            click.echo(f"  {c['sensitivity']:+.4f}  {c['relative']:+.2f}  {c['phrase']}")
    click.echo(f"p_x: {choice.p_x}  p_y: {choice.p_y}  (threshold {threshold}{unit})")
    click.echo(f"init text: {choice.text!r}")


@cli.command()
@click.argument("instruction", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def inspect(instruction, as_json):
    """Show what an .inst file holds: method, base model, init text, settings, tensors.

    \b
      invert inspect sketch.inst
      invert inspect sketch.inst --json | jq .meta.init_text
    """
    from invert.instruction import Instruction

    inst = Instruction.load(instruction)
    info = {"file": str(instruction), "method": inst.method, "meta": inst.meta,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in sorted(inst.tensors.items())}}
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    click.echo(f"{instruction}: {inst.method} instruction")
    for key in sorted(inst.meta):
        value = inst.meta[key]
        click.echo(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    click.echo("  tensors:")
    for name, t in info["tensors"].items():
        click.echo(f"    {name}: {t['dtype']} {t['shape']}")


# Commands in their own modules register here, after the shared helpers above are defined.
from .bench import bench  # noqa: E402
from .bench_quality import quality  # noqa: E402
from .evaluate import eval_command  # noqa: E402
from .export_lora import export_lora  # noqa: E402
from .fit_batch import fit_batch  # noqa: E402
from .import_visii import import_visii_command  # noqa: E402
from .library import library  # noqa: E402
from .ui import ui  # noqa: E402

bench.add_command(quality)
for command in (eval_command, export_lora, fit_batch, import_visii_command, library, bench, ui):
    cli.add_command(command)
