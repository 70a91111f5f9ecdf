"""Which timesteps a fit trains, in which order, with which noise; and which time part a timestep belongs to.

``time_part`` is the one definition of a timestep's part: the fitting schedule assigns each part the timesteps
it returns for that part, and InstructBrush's attention picks a part's K/V with it while sampling, so a part is
trained on exactly the timesteps it is used at (for any number of parts, dividing 1000 or not)."""
from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor


def time_part(timesteps: torch.Tensor, parts: int, num_train_timesteps: int) -> torch.Tensor:
    """min(parts - 1, floor(t * parts / T)) for each timestep t (integer or, while sampling, fractional)."""
    part = torch.floor(torch.as_tensor(timesteps).float() * parts / num_train_timesteps).long()
    return part.clamp(0, parts - 1)


def part_timesteps(part: int, parts: int, num_train_timesteps: int, values: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The training timesteps whose time part is ``part``, ascending; ``values``: the denoiser's timestep of each
    (the part is taken of it; by default the timestep itself)."""
    t = torch.arange(num_train_timesteps)
    return t[time_part(t if values is None else values, parts, num_train_timesteps) == part]


def shuffled_passes(values: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """``steps`` draws from ``values``: each value once per pass, in a shuffled order, reshuffled per pass."""
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    passes = -(-steps // len(values)) if steps else 0
    order = [values[torch.randperm(len(values), generator=gen)] for _ in range(passes)]
    return torch.cat(order)[:steps] if order else torch.zeros(0, dtype=torch.long)


def timestep_order(steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
    """Every timestep once in a shuffled order, reshuffled for each further pass (as the official VISII code)."""
    return shuffled_passes(torch.arange(num_train_timesteps), steps, seed)


def parts_schedule(steps: int, parts: int, num_train_timesteps: int, seed: int, sequential: bool,
                   values: torch.Tensor | None = None) -> torch.Tensor:
    """(fit steps, rows) timesteps for time-parted training: ``steps`` draws from each part's own timesteps
    (each used once per pass, shuffled; ``values`` as for :func:`part_timesteps`). Batched: one row per part, all
    parts each step. Sequential (the paper's schedule): one row, the parts one after another."""
    per_part = [shuffled_passes(part_timesteps(p, parts, num_train_timesteps, values), steps, seed + p)
                for p in range(parts)]
    return torch.cat(per_part)[:, None] if sequential else torch.stack(per_part, dim=1)


def draw_noises(seed: int, shape: tuple[int, ...], count: int, device: torch.device, dtype: torch.dtype
                ) -> torch.Tensor:
    """``count`` noises drawn in order from a CPU generator: every device gets the same tensors, and sampling
    with ``torch.Generator().manual_seed(seed)`` draws the same ones (initial latent first, then each step's)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    return torch.cat([randn_tensor(shape, generator=gen, device=device, dtype=dtype) for _ in range(count)])


__all__ = ["draw_noises", "part_timesteps", "parts_schedule", "shuffled_passes", "time_part", "timestep_order"]
