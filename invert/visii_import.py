"""Import of instructions saved by VISII's official code (github.com/thaoshibe/visii).

Its ``prompt_embeds_N.pt`` is ``torch.save`` of the whole prompt-embedding batch (3 x 77 x 768 with guidance:
the learned prompt, then two unconditional rows). Only the positions between BOS and the initial prompt's
EOS were learned; that prompt is in the run's ``learned_prompt.txt``. The file is read with
``torch.load(weights_only=True)``: plain tensors only, a pickle that would run code is refused. Its noises
(``noises.pt``) are not imported: apply draws invert's own from the stored seed."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .backbones import Editor
from .errors import InstructionFileError, InvertError
from .fitting.assembly import make_instruction
from .instruction import Instruction
from .methods.visii import Visii
from .pairs import file_sha256
from .settings import FitSettings

LEARNED_PROMPT = "learned_prompt.txt"
# The official code restores BOS and the positions from EOS on after every step, so they are the model's own
# encoding of the initial prompt; a larger difference (relative to the largest entry) means another model or text.
FIXED_TOLERANCE = 1e-2


def read_prompt_embeds(path: Path) -> torch.Tensor:
    """The learned prompt row, (1, positions, width) fp32, of a VISII file."""
    if not path.is_file():
        raise InvertError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError...: a bad, truncated or unsafe file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InstructionFileError(f"{path}: not a tensor file that can be read safely ({reason})") from None
    if not isinstance(obj, torch.Tensor) or obj.dim() not in (2, 3) or not obj.is_floating_point():
        found = f"a {obj.dtype} tensor of shape {tuple(obj.shape)}" if isinstance(obj, torch.Tensor) \
            else f"a {type(obj).__name__}"
        raise InstructionFileError(f"{path}: expected VISII's prompt embedding, a float tensor (rows, 77, width); "
                                   f"found {found}")
    embeds = obj.detach().float()
    embeds = embeds[None] if embeds.dim() == 2 else embeds[:1]
    if not torch.isfinite(embeds).all():
        raise InstructionFileError(f"{path}: the prompt embedding holds NaN or inf values")
    return embeds


def find_init_text(path: Path) -> str:
    """The initial prompt from the run's learned_prompt.txt, beside the file or one folder up."""
    for folder in (path.parent, path.parent.parent):
        if (folder / LEARNED_PROMPT).is_file():
            return (folder / LEARNED_PROMPT).read_text(encoding="utf-8").strip()
    raise InvertError(f"{path}: no {LEARNED_PROMPT} beside it; pass --init-text with the prompt the VISII fit "
                      "started from (it tells which positions were learned)")


def import_visii(path: str | Path, editor: Editor, init_text: str | None = None) -> Instruction:
    """A VISII instruction from the official code's saved prompt embedding, for ``editor``'s model."""
    path = Path(path)
    embeds = read_prompt_embeds(path)
    text = find_init_text(path) if init_text is None else init_text
    init = editor.encode_text([text])
    expected = init.embeds.float().cpu()
    if embeds.shape != expected.shape:
        raise InstructionFileError(f"{path}: prompt embedding of shape {tuple(embeds.shape)}; model "
                                   f"'{editor.model_id}' gives {tuple(expected.shape)}")
    eos = init.eos[0]
    fixed = [(embeds[:, :1], expected[:, :1]), (embeds[:, eos:], expected[:, eos:])]
    if max(float((a - b).abs().max()) for a, b in fixed) > FIXED_TOLERANCE * float(expected.abs().max()):
        raise InstructionFileError(f"{path}: its fixed positions are not model '{editor.model_id}''s encoding of "
                                   f"{text!r}; another base model or --init-text?")
    method = Visii(editor, init.embeds, eos, embeds[:, 1:eos].to(editor.device))
    inst = make_instruction(method, editor, FitSettings(init_text=text, resolution=editor.resolution),
                            init_text=text)
    inst.meta = replace(inst.meta, imported_from=f"VISII {path.name} (sha256 {file_sha256(path)})")
    return inst
