"""Applying an instruction: every sampling option declared once, with its default, type, limits and help, and
its rules (which guidance scale when none is given, what a seed means with each noise mode). ``invert apply``,
``invert eval``, the web app and ``invert.apply`` all take these. Importing this module imports no torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from ..defaults import SCHEDULERS
from ..errors import InvertError
from .fields import Checked, flag, option
from .limits import GUIDANCE_WHY, MAX_GUIDANCE, MAX_SAMPLING_STEPS, MAX_SEED, MAX_STRENGTH

# Results per input at most: each is a sampling run of its own.
MAX_VARIATIONS = 1000
# Images per sampling batch (apply's and eval's --batch-size, invert.apply's batch_size): same-size images go through
# the model this many together; results do not depend on it (up to one level of rounding), memory does.
BATCH_SIZE = 4
BATCH_SIZE_LIMITS = {"minimum": 1}
# A --mix weight scales an instruction's change, as --strength does: the same range.
MIX_WEIGHT = {"minimum": -MAX_STRENGTH, "maximum": MAX_STRENGTH}
# A setting the model limits, by name: which of its limits (see invert.settings.limits.ModelLimits).
APPLY_MODEL_LIMITED = {"steps": "sampling_steps"}

SEED_HELP = ("The sampling noise's seed: the noise is drawn as diffusers' pipeline draws it with generator="
             "torch.Generator().manual_seed(SEED), so giving a seed means --noise fresh. Default: the fit's own seed, "
             "stored in the file (--noise stream): the result the fit's previews showed.")


@dataclass(frozen=True)
class ApplySettings(Checked):
    """How an instruction edits images. ``guidance``/``image_guidance`` None: the file's, else IP2P's 7.5 and 1.5;
    ``seed`` None: the fit's own noise stream, a number: fresh noise from it (see :meth:`noise_mode`)."""

    steps: int = option(20, "Sampling steps; at most the model's training timesteps (1000).", minimum=1,
                        maximum=MAX_SAMPLING_STEPS)
    guidance: float | None = option(None, f"Text guidance; default: the file's (else IP2P's 7.5); {GUIDANCE_WHY}.",
                                    minimum=0, maximum=MAX_GUIDANCE)
    image_guidance: float | None = option(None, "Image guidance; default: the file's (else IP2P's 1.5); at most 30, "
                                                "as text guidance.", minimum=0, maximum=MAX_GUIDANCE)
    seed: int | None = option(None, SEED_HELP, minimum=0, maximum=MAX_SEED)
    noise: Literal["stream", "fit", "fresh"] | None = option(
        None, "stream: drawn in order from the fit's seed (the default without --seed); fit: the noise the fit drew "
              "for each timestep, reused (the VISII paper's fixed noise); fresh: from --seed (0 if none), as "
              "diffusers' pipeline with that seed's generator (the default with --seed).")
    scheduler: Literal[tuple(SCHEDULERS)] | None = option(  # type: ignore[valid-type]
        None, "Sampler; default: the model's own (Euler ancestral for IP2P).")
    strength: float = option(1.0, "Scale of the learned change: 0 = the init text, 1 = learned, >1 extrapolates.",
                        minimum=-MAX_STRENGTH, maximum=MAX_STRENGTH)
    reverse: bool = option(False, "Undo the edit: the reverse instruction of a fit with --reverse (a lora "
                                  "instruction's negated adapter).")
    text: str | None = option(None, "Extra instruction text after the learned one (a hybrid instruction).")

    def guidance_for(self, stored: tuple[float, float]) -> tuple[float, float]:
        """(text, image) guidance: as given, else the file's (``stored``: its metadata's ``guidance``, IP2P's
        7.5 and 1.5 when the file records none)."""
        return (self.guidance if self.guidance is not None else stored[0],
                self.image_guidance if self.image_guidance is not None else stored[1])

    def noise_mode(self, variations: int = 1, where: Callable[[str], str] = flag) -> str:
        """The noise a run samples with: ``noise`` as given, else fresh when a seed (or several variations) was
        asked for, as a diffusers or A1111 user expects a seed to change the result, else the fit's stream. A
        seed with noise that ignores it is refused, not ignored."""
        if self.noise in (None, "fresh") and (self.seed is not None or variations > 1 or self.noise == "fresh"):
            return "fresh"
        if self.noise is not None:
            asked = "seed" if self.seed is not None else "num_variations" if variations > 1 else None
            if asked:
                raise InvertError(f"{where(asked)} draws fresh noise, but {where('noise')} {self.noise} uses the "
                                  f"fit's; drop {where(asked)} or use {where('noise')} fresh")
            return self.noise
        return "stream"

    def seeds(self, fit_seed: int, variations: int = 1, where: Callable[[str], str] = flag) -> list[int]:
        """The seed of each variation's noise: the fit's own (``fit_seed``, from the file) for its stream or its
        fit noise, else ``seed`` (0 when not given) and the ones after it."""
        if not 1 <= variations <= MAX_VARIATIONS:
            raise InvertError(f"{where('num_variations')}: must be 1 to {MAX_VARIATIONS}, not {variations}")
        if self.noise_mode(variations, where) != "fresh":
            return [fit_seed]
        first = self.seed if self.seed is not None else 0
        if first + variations - 1 > MAX_SEED:
            raise InvertError(f"{where('seed')} {first} with {variations} variations passes the largest seed, "
                              f"{MAX_SEED}")
        return [first + k for k in range(variations)]


def with_fresh_noise_flag(noise: str | None, fresh_noise: bool, where: Callable[[str], str] = flag) -> str | None:
    """``noise`` with the older ``fresh_noise`` switch folded in (it means noise "fresh")."""
    if fresh_noise and noise not in (None, "fresh"):
        raise InvertError(f"{where('fresh_noise')} and {where('noise')} {noise} contradict each other; give one")
    return "fresh" if fresh_noise else noise


__all__ = ["APPLY_MODEL_LIMITED", "ApplySettings", "MAX_VARIATIONS", "MIX_WEIGHT", "SEED_HELP", "with_fresh_noise_flag"]
