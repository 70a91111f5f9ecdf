"""The inversion methods, by name."""
from .visii import Visii

METHODS = {Visii.name: Visii}
