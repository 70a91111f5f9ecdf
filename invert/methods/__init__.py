"""The inversion methods, by name."""
from .brush import Brush
from .lora import Lora
from .visii import Visii

METHODS = {Visii.name: Visii, Brush.name: Brush, Lora.name: Lora}
