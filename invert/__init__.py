"""invert: learn image-editing instructions from before/after pairs on a frozen InstructPix2Pix.

    import invert
    inst = invert.fit("pairs/", method="visii", model="toy", steps=200)
    inst.save("edit.inst")
    edited = invert.apply("edit.inst", [image])
"""
__version__ = "0.1.0"

from .api import apply, fit, method_for  # noqa: E402
from .editor import Editor, load_editor  # noqa: E402
from .errors import InvertError  # noqa: E402
from .fitting import FitOptions  # noqa: E402
from .instruction import Instruction  # noqa: E402
from .pairs import Pair, find_pairs  # noqa: E402

__all__ = ["fit", "apply", "method_for", "load_editor", "Editor", "Instruction", "FitOptions", "InvertError",
           "Pair", "find_pairs", "__version__"]
