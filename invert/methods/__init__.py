"""The inversion methods, by name."""
from .brush import Brush
from .visii import Visii

METHODS = {Visii.name: Visii, Brush.name: Brush}
