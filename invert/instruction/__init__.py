"""The ``.inst`` file: its tensors and metadata, read and verified, written through ``invert.writing`` (``file``),
its metadata typed (``metadata``), and the exemplar thumbnails it stores (``thumbnails``)."""
from __future__ import annotations

from .file import (
                   MAX_HEADER_BYTES,
                   Instruction,
                   check_safetensors_header,
                   is_instruction_file,
                   read_verified,
                   tensors_sha256,
)
from .metadata import FORMAT, VERSION, Metadata

__all__ = ["FORMAT", "MAX_HEADER_BYTES", "VERSION", "Instruction", "Metadata", "check_safetensors_header",
           "is_instruction_file", "read_verified", "tensors_sha256"]
