"""Defaults and names the CLI builds its options from, importable without torch or diffusers, so that
`invert --help` and shell completion answer at once."""

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
# IP2P's guidance scales (text, image): the fit's defaults, and apply's when a file records none.
IP2P_GUIDANCE, IP2P_IMAGE_GUIDANCE = 7.5, 1.5

# --scheduler names -> diffusers scheduler classes. euler_a_karras: Euler ancestral on Karras et al.'s sigmas, the
# InstructBrush paper's sampler (diffusers' ancestral Euler has no Karras option: invert sets the sigmas itself).
SCHEDULERS = {
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler_a_karras": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
KARRAS = {"euler_a_karras"}

# apply's noise: "stream" draws the initial latent and each ancestral step's noise, in order, from a generator of
# the fit's seed (what diffusers' pipeline does with generator=torch.Generator().manual_seed(seed)); "fit" reuses
# the noise the fit drew for each timestep (VISII paper, Fig. 8); "fresh" is the stream of --seed.
NOISE_MODES = ("stream", "fit", "fresh")

# Instruction libraries' softmax temperature. The best mean PSNR on the toy world over held-out compositions and
# catalogue edits, from 1 and 10 pairs, of 0.01, 0.03, 0.1 and 0.3 (benchmarks.library, README): 0.1 and
# 0.03 tie on the mean; 0.1 edits the compositions better (mixing helps there), 0.03 the edits the library holds
# (picking one helps there).
DEFAULT_TEMPERATURE = 0.1
# Its range (apply's --temperature, Library.choose's temperature), and that of the number of best-matching
# instructions mixed (--best, Library.choose's top).
TEMPERATURE_LIMITS = {"above": 0, "maximum": 100.0}
BEST_LIMITS = {"minimum": 1}
