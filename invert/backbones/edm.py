"""EDM training (Karras et al. 2022) as diffusers' EDM schedulers precondition the denoiser (CosXL Edit samples with
``EDMEulerScheduler``, v-prediction, sigma_data 1): the UNet reads c_in (x0 + sigma n) at timestep
0.25 log(sigma), and c_skip x + c_out F is its estimate of x0.

A fit counts training timesteps as a DDPM model does, 0 (least noise) to T - 1 (most): training timestep i is the
noise level of the scheduler's own T-step sampling schedule counted from its end, and a sampling step's noise
level falls between two of them (its *position*, fractional). Rows carry positions, so InstructBrush's time
parts and the fit's stored noises mean the same at fitting and at sampling as on a DDPM model."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import TrainingInputs
from .ddpm import check_prediction_type

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


def is_edm(scheduler: SchedulerMixin) -> bool:
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    return isinstance(scheduler, (EDMEulerScheduler, EDMDPMSolverMultistepScheduler))


class EdmTraining:
    """The noise levels of an EDM scheduler's training timesteps, and training with them."""

    def __init__(self, scheduler: SchedulerMixin, device: torch.device):
        config = scheduler.config
        check_prediction_type(config.prediction_type)
        table = type(scheduler).from_config(config)
        table.set_timesteps(config.num_train_timesteps)
        self.sigmas = table.sigmas[:-1].flip(0).to(device, torch.float32)  # ascending; the final 0 left out
        self.log_sigmas = self.sigmas.log()
        self.sigma_data = float(config.sigma_data)
        self.prediction_type = config.prediction_type
        self.precondition_noise = table.precondition_noise

    def sigma(self, positions: torch.Tensor) -> torch.Tensor:
        """The noise level at each (fractional) position: log-linear between training timesteps, exact at them."""
        p = torch.as_tensor(positions, device=self.sigmas.device).float().clamp(0, len(self.sigmas) - 1)
        low = p.floor().long().clamp(max=len(self.sigmas) - 2)
        w = p - low
        return torch.exp(torch.lerp(self.log_sigmas[low], self.log_sigmas[low + 1], w))

    def position(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The position of the scheduler's timesteps 0.25 log(sigma) among the training timesteps."""
        log_sigma = 4 * torch.as_tensor(timesteps, device=self.sigmas.device).float().reshape(-1)
        high = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.sigmas) - 1)
        low = high - 1
        w = (log_sigma - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low])
        return (low + w).clamp(0, len(self.sigmas) - 1)

    def unet_timesteps(self, positions: torch.Tensor) -> torch.Tensor:
        """The UNet's timestep (the scheduler's c_noise) at each position."""
        return self.precondition_noise(self.sigma(positions))

    def _scales(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_in, c_skip, c_out of the scheduler's preconditioning, shaped to broadcast over latents."""
        sigma = sigma.view(-1, 1, 1, 1)
        sd2 = self.sigma_data**2
        c_in = 1 / (sigma**2 + sd2) ** 0.5
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        return c_in, c_skip, c_out if self.prediction_type == "epsilon" else -c_out

    def training_inputs(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> TrainingInputs:
        """The UNet's input c_in (x0 + sigma n) and the output F with c_skip x + c_out F = x0; the signal share
        sigma_data^2 / (sigma^2 + sigma_data^2) (with sigma_data 1, a DDPM alpha-bar)."""
        sigma = self.sigmas[t]
        c_in, c_skip, c_out = self._scales(sigma)
        x = x0 + sigma.view(-1, 1, 1, 1) * noise
        signal = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        return TrainingInputs(c_in * x, (x0 - c_skip * x) / c_out, signal.view(-1, 1, 1, 1))

    def clean_estimate(self, prediction: torch.Tensor, inputs: TrainingInputs, t: torch.Tensor) -> torch.Tensor:
        c_in, c_skip, c_out = self._scales(self.sigmas[t])
        return c_skip * (inputs.noisy / c_in) + c_out * prediction


__all__ = ["EdmTraining", "is_edm"]
