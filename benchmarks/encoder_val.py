"""Edit encoders compared on *validation scenes* (``quality.VALIDATION_SEED``, never the quality table's test
scenes), for choosing an encoder's configuration (issue 30): each encoder's instruction from 10 and from 1 training
pairs (the quality table's), applied to 5 validation scenes per edit as the table applies, PSNR (dB) to the true
edits. With ``--parts``, a diagnosis row for the composed edits: the sum of the encoder's basis weights for each
part's own pairs (what an encoder that adds the parts of an edit would give).

    python -m benchmarks.encoder_val --encoders a.safetensors,b.safetensors --json out.json
"""
from __future__ import annotations

import argparse
import json

import torch

from invert.backbones import load_editor
from invert.clip import clip_name_for, load_clip
from invert.encoder import EncoderFile, encoded_method, refinement
from invert.encoder.network import load_state
from invert.fitting.validation import Validation
from invert.toy import world

from .quality import VALIDATION_SEED, QualitySettings, edit_pairs

BENCH = QualitySettings()
# Two edits of each held-out kind (compositions, a strength, a hue angle) and three catalogue edits.
EDITS = ["night_frame", "gray_contrast_frame", "circle_red_cooler", "sepia_half", "hue90", "dusk",
         "night", "circle_red", "sepia"]


def _psnr(editor, method, befores, truths) -> float:
    """The method applied as the quality table applies, mean PSNR to the true edits."""
    return Validation(editor, befores, truths, steps=BENCH.apply_steps, guidance=BENCH.guidance[0],
                      image_guidance=BENCH.guidance[1], seed=BENCH.seed).score(method)


def _features(clip, pairs):
    return clip.image_features([b for b, _ in pairs]), clip.image_features([a for _, a in pairs])


def compare(editor, clip, encoders: dict[str, EncoderFile], edits: list[str], shots: tuple[int, ...],
            parts: bool = False, refine: int = 0, seed: int = 0, log=print) -> dict:
    """``{encoder: {edit: {shots: psnr, "parts": psnr}}}`` on validation scenes."""
    size = editor.resolution
    out: dict = {name: {} for name in encoders}
    for edit in edits:
        train, val = edit_pairs(edit, max(shots), BENCH.n_test, size, test_seed=VALIDATION_SEED)
        befores, truths = [b for b, _ in val], [a for _, a in val]
        components = world.components(world.get_edit(edit))
        for name, encoder in encoders.items():
            cells = {}
            for k in shots:
                method = encoded_method(encoder, editor, clip, [b for b, _ in train[:k]], [a for _, a in train[:k]],
                                        refine=refinement(encoder, refine, seed=seed))
                cells[str(k)] = _psnr(editor, method, befores, truths)
            if parts and len(components) > 1:
                net = encoder.encoder
                with torch.no_grad():
                    weights = sum(net.weights(*_features(clip, edit_pairs(p, max(shots), 0, size)[0]))
                                  for p in components)
                load_state(method, net.decode(weights))
                cells["parts"] = _psnr(editor, method, befores, truths)
            out[name][edit] = cells
            log(f"{edit:22s} {name:28s} " + " ".join(f"{k} {v:6.2f}" for k, v in cells.items()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", required=True, help="Comma-separated encoder files.")
    parser.add_argument("--edits", default=",".join(EDITS))
    parser.add_argument("--shots", default="10,1")
    parser.add_argument("--parts", action="store_true", help="Add the parts-sum row for composed edits.")
    parser.add_argument("--refine", type=int, default=0, help="Refinement steps of each encoder's answer "
                        "(invert encode --encoder-refine).")
    parser.add_argument("--seed", type=int, default=0, help="The refinement's seed.")
    parser.add_argument("--model", default="toy")
    parser.add_argument("--json", default=None, help="Write the result here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    editor = load_editor(args.model, "cpu", "auto")
    clip = load_clip(clip_name_for(None, editor.model_id), editor.device)
    encoders = {path: EncoderFile.load(path) for path in args.encoders.split(",")}
    result = compare(editor, clip, encoders, args.edits.split(","), tuple(int(k) for k in args.shots.split(",")),
                     args.parts, args.refine, args.seed)
    for name, per_edit in result.items():
        for key in sorted({k for cells in per_edit.values() for k in cells}):
            means = {group: [c[key] for e, c in per_edit.items() if key in c and (e in world.HARD_EDITS) == hard]
                     for group, hard in (("held-out", True), ("catalogue", False))}
            print(f"{name} {key}: " + ", ".join(f"{group} mean {sum(v) / len(v):.2f} ({len(v)} edits)"
                                                for group, v in means.items() if v))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
