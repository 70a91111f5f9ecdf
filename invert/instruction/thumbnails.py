"""The exemplar thumbnails an .inst file stores: a small copy of its first pair, for preview grids and libraries."""
from __future__ import annotations

import torch
from PIL import Image

THUMBNAIL = 128


def thumbnail_tensor(img: Image.Image) -> torch.Tensor:
    """A small uint8 HWC copy of an exemplar image, stored in the .inst for preview grids."""
    img = img.copy()
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(img.height, img.width, 3)


def tensor_image(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.numpy())


__all__ = ["THUMBNAIL", "tensor_image", "thumbnail_tensor"]
