"""Image dimensions from file headers, so a source can bounds-check thousands of labels
without decoding thousands of images."""

from __future__ import annotations

import os
import struct

import cv2

# JPEG start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    if head[:2] != b"BM" or len(head) < 26:
        return None
    (dib_size,) = struct.unpack("<I", head[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
        return struct.unpack("<HH", head[18:22])
    width, height = struct.unpack("<ii", head[18:26])
    return width, abs(height)  # negative height means top-down rows


def _jpeg_size(fh) -> tuple[int, int] | None:
    fh.seek(0)
    if fh.read(2) != b"\xff\xd8":
        return None
    while True:
        byte = fh.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = fh.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            continue
        raw = fh.read(2)
        if len(raw) < 2:
            return None
        (length,) = struct.unpack(">H", raw)
        if marker in _JPEG_SOF:
            data = fh.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return width, height
        fh.seek(length - 2, os.SEEK_CUR)


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of an image file, or None if it cannot be read.

    PNG, BMP and JPEG are read from their headers; other formats (TIFF, ...) are decoded.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
            size = _png_size(head) or _bmp_size(head) or _jpeg_size(fh)
    except OSError:
        return None
    if size is not None:
        return int(size[0]), int(size[1])
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    return int(image.shape[1]), int(image.shape[0])
