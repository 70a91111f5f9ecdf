"""Edit without fitting (issue 30): an edit encoder turns one or more exemplar pairs of an edit into an instruction
of a chosen method in one forward pass, and starts fits closer (``invert fit --init encoder:FILE``).

``network``: the encoder (CLIP features of the pairs -> weights over a learned basis -> the method's state);
``training``: its training end to end through the frozen editor with the fit's own loss; ``data``: the episodes it
trains on; ``file``: the encoder file; ``encode``: an instruction from pairs; ``refine``: an answer's basis weights
fitted to the pairs; ``loss``: the fit's loss on an encoded state, shared by training and refinement."""
from __future__ import annotations

from .encode import encode, encode_images, encoded_method, find_encoder, refinement, shipped_encoders
from .file import EncoderFile
from .network import EditEncoder

__all__ = ["EditEncoder", "EncoderFile", "encode", "encode_images", "encoded_method", "find_encoder",
           "refinement", "shipped_encoders"]
