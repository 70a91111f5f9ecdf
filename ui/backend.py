"""Every call the web app makes into the invert library, and nothing else: the app's handlers use only these
functions and names, so that a change in the library's API is adapted here, in one place."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from PIL import Image

import invert
from invert.api import FitProgress
from invert.defaults import DEFAULT_TEMPERATURE
from invert.errors import InvertError
from invert.fitting.checkpoint import FitState, FitStopped
from invert.instruction import Instruction
from invert.pairs import Pair, find_pairs, is_image_file, open_image

if TYPE_CHECKING:
    from invert.fitting.phrases import PhraseChoice

__all__ = ["DEFAULT_TEMPERATURE", "FitProgress", "FitState", "FitStopped", "InvertError", "Instruction", "Model",
           "Pair", "describe", "find_pairs", "is_image_file", "load_instruction", "methods", "open_image",
           "save_instruction", "save_state"]


def methods() -> list[tuple[str, str]]:
    """Every registered method as (label, name), for the app's menus."""
    from invert.methods import method_entries

    return [(f"{e.title}: {e.summary}", e.name) for e in method_entries()]


class Model:
    """The one editor (and CLIP model) the app loads at start and uses for everything. It is not safe to use
    from two threads at once: the app queues every event that touches it in one line (see app.MODEL_QUEUE)."""

    def __init__(self, name: str, device: str = "auto", dtype: str = "auto"):
        self.name = name
        self.editor = invert.load_editor(name, device, dtype)
        self._clip = None

    @property
    def clip(self):
        """The CLIP model of the base model's fits (loaded on first use: applying needs none)."""
        if self._clip is None:
            from invert.clip import clip_name_for, load_clip

            self._clip = load_clip(clip_name_for(None, self.editor.model_id), self.editor.device)
        return self._clip

    @property
    def resolution(self) -> int:
        return self.editor.resolution

    def defaults(self) -> dict[str, float | int]:
        """The Learn tab's starting settings: the library's, except on the toy model, which learns well only with
        a larger learning rate and lower guidance, in 100 steps (README's quick start)."""
        from invert.settings import FitSettings

        d = FitSettings()
        if self.name == "toy":
            return {"steps": 100, "lr": 1e-2, "guidance": 3.0, "image_guidance": d.image_guidance}
        return {"steps": d.steps, "lr": d.lr, "guidance": d.guidance, "image_guidance": d.image_guidance}

    def load_pairs(self, pairs: list[Pair]) -> tuple[list[Image.Image], list[Image.Image]]:
        """Open every pair as ``invert fit`` does (its checks, its one-line errors), at the model's resolution."""
        from invert.pairs import load_pairs

        return load_pairs(pairs, self.resolution)

    def at_resolution(self, images: list[Image.Image]) -> list[Image.Image]:
        """Images resized and centre-cropped to the model's size, as exemplars are (for quick previews)."""
        from invert.pairs import fit_to_resolution

        return [fit_to_resolution(img, self.resolution) for img in images]

    def phrases(self, pairs: list[Pair]) -> PhraseChoice:
        """InstructBrush's phrase choice for these pairs (``invert phrases``): ``.text``, ``.p_x``, ``.p_y``,
        ``.candidates``."""
        from invert.fitting.phrases import unique_phrases
        from invert.vocab import load_vocab, model_vocab

        befores, afters = self.load_pairs(pairs)
        return unique_phrases(self.clip, befores, afters, load_vocab(model_vocab(self.name)))

    def fit(self, pairs: list[Pair], method: str, *, progress: Callable[[FitProgress], None],
            should_stop: Callable[[], bool], checkpoint: Callable[[Instruction, int], None], save_every: int,
            resume: FitState | None, **options) -> Instruction:
        """``invert.fit`` on this model; ``options``: steps, lr, seed, guidance, image_guidance, init_text.
        A stop raises FitStopped, whose ``state`` resumes the fit."""
        return invert.fit(pairs, method, editor=self.editor, clip=self.clip, quiet=True, progress=progress,
                          should_stop=should_stop, checkpoint=checkpoint, save_every=save_every, resume=resume,
                          **options)

    def apply(self, instruction: Instruction, images: list[Image.Image], *, text: str | None = None,
              strength: float = 1.0, steps: int = 20, guidance: float | None = None,
              image_guidance: float | None = None, seed: int | None = None, fresh_noise: bool = False,
              ) -> list[Image.Image]:
        return invert.apply(instruction, images, editor=self.editor, text=text or None, strength=strength,
                            steps=steps, guidance=guidance, image_guidance=image_guidance, seed=seed,
                            fresh_noise=fresh_noise)

    def mix(self, instructions: list[Instruction], weights: list[float]) -> Instruction:
        """Instructions of one method mixed by weight (``invert apply --mix``), as one instruction."""
        from invert.api import mix

        return mix(instructions, self.editor, weights)

    def library_instruction(self, library: Path, befores: list[Path], afters: list[Path], temperature: float,
                            top: int | None = None, method: str | None = None
                            ) -> tuple[Instruction, list[tuple[str, float]]]:
        """The instruction a library makes for new exemplar pairs (``invert apply --library``), with the names
        and weights of the instructions it mixed, heaviest first."""
        from invert.library import Library
        from invert.pairs import load_pairs

        lib = Library.load(library)
        pairs = [find_pairs(before=b, after=a)[0] for b, a in zip(befores, afters)]
        size = int(lib.entries[0].instruction.meta.get("resolution") or self.resolution)
        inst, chosen, weights = lib.instruction_for(*load_pairs(pairs, size), editor=self.editor,
                                                    method=method, temperature=temperature, top=top)
        return inst, [(e.name, w) for e, w in zip(chosen, weights)]


def load_instruction(path: str | Path) -> Instruction:
    """An .inst file, checked as ``invert apply`` checks it."""
    return Instruction.load(path)


def save_instruction(inst: Instruction, path: Path) -> Path:
    return inst.save(path)


def save_state(state: FitState, path: Path) -> Path:
    """A stopped fit's state, the file ``invert fit --resume`` continues from."""
    return state.save(path)


def describe(inst: Instruction) -> str:
    """One line about an instruction: method, init text, steps and final loss."""
    meta = inst.meta
    parts = [inst.method, f"init text {meta.get('init_text', '')!r}"]
    if meta.get("steps") is not None:
        parts.append(f"{meta['steps']} steps")
    if meta.get("final_loss"):
        parts.append(f"loss {meta['final_loss']}")
    return ", ".join(parts)
