"""The library's entry points: fit an instruction to exemplar pairs, and apply one to images."""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

from PIL import Image

from .checkpoint import FitState

from .clip import Clip, clip_name_for, load_clip
from .editor import DEFAULT_MODEL, Editor, load_editor
from .errors import InstructionFileError
from .fitting import FitOptions, fit_images
from .instruction import Instruction
from .methods import METHODS
from .methods.base import Method
from .methods.reverse import reverse_parts
from .pairs import Pair, file_sha256, find_pairs, load_pairs
from .sampling import sample


def _as_pairs(pairs) -> list[Pair]:
    if isinstance(pairs, (str, os.PathLike)):
        return find_pairs(pairs)
    if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], Pair):
        return find_pairs(before=pairs[0], after=pairs[1])
    return list(pairs)


class FitProgress(NamedTuple):
    """What ``fit(progress=...)`` reports after every step."""

    step: int  # steps done
    total: int
    loss: float  # this step's loss


def fit(pairs, method: str = "visii", *, model: str = DEFAULT_MODEL, editor: Editor | None = None,
        clip_model: str | None = None, clip: Clip | None = None, device: str = "auto", dtype: str = "auto",
        quiet: bool = False, save_every: int = 0, checkpoint=None, resume: FitState | str | os.PathLike | None = None,
        should_stop: Callable[[], bool] | None = None, low_memory: bool = False,
        progress: Callable[[FitProgress], None] | None = None, **options) -> Instruction:
    """Learn an instruction from before/after exemplars.

    ``pairs``: a pairs folder, a ``(before, after)`` tuple of files, or a list of :class:`Pair`.
    ``options``: fields of :class:`FitOptions` (steps, lr, seed, resolution, init_text, loss_target, ...).
    ``resume``: a :class:`FitState` (or its file) of a stopped fit with the same inputs. ``should_stop``: asked
    after every step; when it says yes, or the fit diverges, ``invert.checkpoint.FitStopped`` holds the state to resume.
    ``progress``: called after every step with a :class:`FitProgress` (a live loss curve).

    >>> inst = invert.fit("examples/toy/night/train", model="toy", steps=100)   # doctest: +SKIP
    >>> inst.save("night.inst")                                                 # doctest: +SKIP
    """
    opts = FitOptions(**options)
    if isinstance(resume, (str, os.PathLike)):
        resume = FitState.load(resume)
    found = _as_pairs(pairs)
    editor = editor or load_editor(model, device, dtype)
    if low_memory:  # see Editor.set_low_memory; it stays on for an editor passed in
        editor.set_low_memory(True)
    opts.resolution = opts.resolution or editor.resolution
    befores, afters = load_pairs(found, opts.resolution)
    if clip is None and (opts.clip_weight or opts.init_text is None):
        clip = load_clip(clip_name_for(clip_model, editor.model_id), editor.device)
    exemplars = [{"name": p.name, "before": file_sha256(p.before), "after": file_sha256(p.after)} for p in found]
    report = None if progress is None else lambda step, total, loss: progress(FitProgress(step, total, loss))
    return fit_images(editor, befores, afters, method, opts, clip=clip, exemplars=exemplars, quiet=quiet,
                      checkpoint=checkpoint, save_every=save_every, resume=resume, should_stop=should_stop,
                      progress=report)


def method_for(instruction: Instruction, editor: Editor, strength: float = 1.0, text: str | None = None,
               path: str | os.PathLike = "", reverse: bool = False) -> Method:
    """The method object that applies ``instruction`` on ``editor``'s model; ``reverse``: its inverse edit (the
    reverse instruction of a fit with --reverse; a LoRA's negated adapter)."""
    if instruction.method not in METHODS:
        raise InstructionFileError(f"{path or 'instruction'}: unknown method '{instruction.method}'")
    tensors, meta = instruction.tensors, instruction.meta
    if reverse and instruction.method == "lora":
        strength = -strength
    elif reverse:
        parts = reverse_parts(tensors, meta)
        if parts is None:
            raise InstructionFileError(f"{path or 'instruction'}: holds no reverse instruction (fit it with --reverse)")
        tensors, meta = parts
    try:
        method = METHODS[instruction.method].from_tensors(tensors, meta, editor, strength)
    except KeyError as exc:
        raise InstructionFileError(f"{path or 'instruction'}: missing tensor {exc}") from None
    except InstructionFileError as exc:  # the method's shape checks do not know the file's name
        raise InstructionFileError(f"{path or 'instruction'}: {exc}") from None
    if text:
        method = method.hybrid(editor, text)
    return method


def apply(instruction: Instruction | str | os.PathLike, images: list[Image.Image], *, editor: Editor | None = None,
          model: str | None = None, device: str = "auto", dtype: str = "auto", text: str | None = None,
          steps: int = 20, guidance: float | None = None, image_guidance: float | None = None,
          seed: int | None = None, fresh_noise: bool = False, scheduler: str | None = None, strength: float = 1.0,
          allow_model_mismatch: bool = False, batch_size: int | None = None, low_memory: bool = False,
          reverse: bool = False) -> list[Image.Image]:
    """Edit ``images`` with a learned instruction, alone or followed by ``text`` (a hybrid instruction).

    By default the noise is the fit's own (drawn from the seed stored in the file); ``fresh_noise`` draws it
    from ``seed`` exactly as diffusers' pipeline does with ``generator=torch.Generator().manual_seed(seed)``.
    Guidance scales default to those stored in the file. ``reverse`` undoes the edit (see :func:`method_for`)."""
    path = instruction if isinstance(instruction, (str, os.PathLike)) else (instruction.path or "")
    inst = Instruction.load(instruction) if isinstance(instruction, (str, os.PathLike)) else instruction
    editor = editor or load_editor(model or inst.meta.get("base_model", DEFAULT_MODEL), device, dtype)
    if low_memory:
        editor.set_low_memory(True)
    inst.check_model(editor.fingerprint, allow_model_mismatch, path)
    method = method_for(inst, editor, strength, text, path, reverse)
    stored = inst.meta.get("guidance") or {}
    noise_seed = (seed if seed is not None else 0) if fresh_noise else int(inst.meta.get("noise_seed", 0))
    results: list[Image.Image] = []
    # Images of one size go through the pipeline together, at most ``batch_size`` at a time (memory grows with
    # the batch); every image has its own noise generator, so its result does not depend on the batch.
    for group in _same_size_runs(images, batch_size):
        results += sample(editor, method, group, steps=steps,
                          guidance=guidance if guidance is not None else stored.get("text", 7.5),
                          image_guidance=image_guidance if image_guidance is not None else stored.get("image", 1.5),
                          seed=noise_seed, scheduler=scheduler)
    return results


def _same_size_runs(images: list[Image.Image], batch_size: int | None = None) -> list[list[Image.Image]]:
    runs: list[list[Image.Image]] = []
    for img in images:
        if runs and runs[-1][0].size == img.size and len(runs[-1]) != batch_size:
            runs[-1].append(img)
        else:
            runs.append([img])
    return runs


__all__ = ["fit", "apply", "method_for"]
