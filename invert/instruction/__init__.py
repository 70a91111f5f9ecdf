"""The ``.inst`` file: its tensors and metadata, read and verified, written through ``invert.writing`` (``file``),
and the exemplar thumbnails it stores (``thumbnails``)."""
from __future__ import annotations

from .file import (
                   FORMAT,
                   MAX_HEADER_BYTES,
                   VERSION,
                   Instruction,
                   check_safetensors_header,
                   is_instruction_file,
                   read_verified,
                   tensors_sha256,
)

__all__ = ["FORMAT", "MAX_HEADER_BYTES", "VERSION", "Instruction", "check_safetensors_header", "is_instruction_file",
           "read_verified", "tensors_sha256"]
