"""Image dimensions from file headers, so a source can bounds-check thousands of labels
without decoding thousands of images: Pillow's ``Image.open`` reads the header only."""

from __future__ import annotations

import cv2
from PIL import Image


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of an image file, or None if it cannot be read. A format Pillow
    does not know (or a frame too large for its guard) is decoded with OpenCV."""
    try:
        with Image.open(path) as image:
            return int(image.size[0]), int(image.size[1])
    except (Image.UnidentifiedImageError, Image.DecompressionBombError):
        pass
    except (OSError, ValueError):
        return None
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    return int(image.shape[1]), int(image.shape[0])
