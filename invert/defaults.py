"""Defaults and names the CLI builds its options from, importable without torch or diffusers, so that
`invert --help` and shell completion answer at once."""

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"

# --scheduler names -> diffusers scheduler classes
SCHEDULERS = {
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}

# Instruction libraries' softmax temperature. The best mean PSNR on the toy world over held-out compositions and
# catalogue edits, from 1 and 10 pairs, of 0.01, 0.03, 0.1 and 0.3 (invert.bench.library, README): 0.1 and
# 0.03 tie on the mean; 0.1 edits the compositions better (mixing helps there), 0.03 the edits the library holds
# (picking one helps there).
DEFAULT_TEMPERATURE = 0.1
