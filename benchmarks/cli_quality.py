"""``python -m benchmarks quality``: the toy world's quality table."""
from __future__ import annotations

import json
from pathlib import Path

import click

from invert.cli.common import check_output, quiet_option, threads_option, user_errors
from invert.errors import InvertError


@click.command("quality")
@click.option("--model", default="toy", show_default=True, envvar="INVERT_MODEL",
              help="A model trained on the toy world (its folder holds the toy CLIP in clip/).")
@click.option("--edits", default=None,
              help="Comma-separated edit names; default: 5 global, 5 local, 12 hard (8 of them new).")
@click.option("--steps", default=None, type=click.IntRange(min=0),
              help="Fit steps (InstructBrush: per time part, the parts trained together); default: the model's own "
                   "(the toy model's: 300 for visii and lora, 100 for brush).")
@click.option("--shots", default="1,10", show_default=True, help="Comma-separated exemplar counts.")
@click.option("--apply-steps", default=20, show_default=True, type=click.IntRange(min=1), help="Sampling steps.")
@click.option("--n-test", default=5, show_default=True, type=click.IntRange(min=1), help="Held-out pairs per edit.")
@click.option("--rows", default=None, help="Comma-separated rows; default: all.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--loss-target", type=click.Choice(["cfg", "cond"]), default=None,
              help="The loss target of the method rows that do not pin one (not the encoder rows); default: the "
                   "model's own, else the library's.")
@click.option("--scenes", type=click.Choice(["test", "validation"]), default="test", show_default=True,
              help="The held-out scenes: the table's test scenes, or the validation scenes defaults are chosen on.")
@click.option("--encoder", type=click.Path(path_type=Path), default=None,
              help="The edit encoder of the encoder rows; default: the one the model's folder ships (without one, "
                   "the default rows leave them out).")
@click.option("--encoder-refine", default=100, show_default=True, type=click.IntRange(min=0),
              help="Refinement steps of the encoder+refine rows (invert encode --encoder-refine).")
@click.option("--guidance", default="3,1.5", show_default=True,
              help="Text guidance, or text and image guidance (G,IG), of every fit and edit: the toy IP2P edits best "
                   "at 3; an editor with one guidance scale (the toy DiT) ignores the image guidance.")
@click.option("--device", default="auto", show_default=True, envvar="INVERT_DEVICE",
              help="auto, cuda, cuda:1, mps or cpu. [env: INVERT_DEVICE]")
@threads_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the full result (per edit, per row) as one JSON object instead of the table.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Also write the full result as JSON to this file.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@quiet_option
@user_errors
def quality(model, edits, steps, shots, apply_steps, n_test, rows, seed, loss_target, scenes, encoder, encoder_refine,
            guidance, device, as_json, output, force, quiet):
    """Fit and apply every method on held-out scenes of the toy world and print the TOP-Bench-style table.

    \b
      python -m benchmarks quality                             # the README table (hours on a 2-core CPU)
      python -m benchmarks quality --edits night,hue90 --shots 10 --steps 50 -o q.json
      python -m benchmarks quality --edits night --shots 1 --steps 20 --json | jq .edits.night
    """
    from invert.backbones import load_editor
    from invert.clip import clip_name_for, load_clip
    from invert.encoder import shipped_encoders
    from invert.toy import world

    from . import quality as benchmark

    if output is not None:
        check_output(output, force)
    names = edits.split(",") if edits else None
    for name in names or []:
        if name not in world.EDITS and name not in world.HARD_EDITS:
            raise InvertError(f"unknown edit '{name}' (known: {', '.join([*world.EDITS, *world.HARD_EDITS])})")
    chosen_rows = tuple(rows.split(",")) if rows else benchmark.ROWS
    unknown = set(chosen_rows) - set(benchmark.ROWS)
    if unknown:
        raise InvertError(f"unknown rows {', '.join(sorted(unknown))} (known: {', '.join(benchmark.ROWS)})")
    if encoder is None and set(chosen_rows) & set(benchmark.ENCODED):
        shipped = shipped_encoders(model)
        if len(shipped) == 1:
            encoder = next(iter(shipped.values()))
        elif rows:
            raise InvertError(f"rows {', '.join(benchmark.ENCODED)} need --encoder FILE (the model ships "
                              f"{len(shipped)} encoders)")
        else:
            chosen_rows = tuple(r for r in chosen_rows if r not in benchmark.ENCODED)
    try:
        shot_counts = tuple(int(k) for k in shots.split(","))
    except ValueError:
        raise InvertError(f"--shots {shots!r}: expected comma-separated integers such as 1,10") from None
    try:
        scales = tuple(float(g) for g in guidance.split(","))
    except ValueError:
        raise InvertError(f"--guidance {guidance!r}: expected a number or two, such as 3 or 3,1.5") from None
    if len(scales) not in (1, 2):
        raise InvertError(f"--guidance {guidance!r}: expected a number or two, such as 3 or 3,1.5")
    editor = load_editor(model, device)
    clip = load_clip(clip_name_for(None, editor.model_id), editor.device)
    settings = benchmark.QualitySettings(steps=steps, shots=shot_counts, n_test=n_test, apply_steps=apply_steps,
                                         guidance=(scales + (1.5,))[:2], seed=seed, rows=chosen_rows,
                                         encoder=None if encoder is None else str(encoder),
                                         encoder_refine=encoder_refine,
                                         test_seed=benchmark.VALIDATION_SEED if scenes == "validation" else
                                         benchmark.TEST_SEED,
                                         fit_options={} if loss_target is None else {"loss_target": loss_target})
    result = benchmark.run(editor, clip, names, settings, log=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    result["model"] = model
    click.echo(json.dumps(result, indent=2) if as_json else benchmark.format_table(result))
    if output is not None:
        from invert.writing import write_text

        write_text(output, json.dumps(result, indent=2) + "\n", force)
        click.echo(f"wrote {output}", err=True)
