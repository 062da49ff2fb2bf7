"""Image size from JPEG / PNG headers, and the host-side check that bytes can be an image.

numpy and the standard library only, so that it can be used and tested without DALI. The DALI
backend needs the size of every image on the host to draw its crop windows before the bytes
reach the decoder (see `crop_params`), and catching truncated or non-image files here lets the
error name the file instead of failing inside a DALI batch.
"""
from __future__ import annotations

import struct

import numpy as np


class CorruptImage(ValueError):
    """A file that cannot be decoded (message says why)."""


# SOF markers that carry the frame size (baseline, extended, progressive, lossless, ...).
# 0xC4 (DHT), 0xC8 (reserved) and 0xCC (DAC) share the range but carry no frame size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(data: np.ndarray | bytes) -> tuple[int, int]:
    """(height, width) from a JPEG or PNG header; CorruptImage when the bytes cannot be an image.

    A cheap check, not a decode: JPEG needs the SOI marker, a frame header and an EOI marker in
    the last bytes (catches truncated downloads); PNG needs its signature and IHDR.
    """
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if len(buf) < 4:
        raise CorruptImage(f"only {len(buf)} bytes")
    if buf[:8] == _PNG_SIGNATURE:
        if len(buf) < 24 or buf[12:16] != b"IHDR":
            raise CorruptImage("PNG without IHDR")
        w, h = struct.unpack(">II", buf[16:24])
        return h, w
    if buf[:2] != b"\xff\xd8":
        raise CorruptImage("not a JPEG (no SOI marker)")
    # EOI must end the stream; some encoders append a few padding bytes after it.
    if buf.rfind(b"\xff\xd9", max(0, len(buf) - 64)) < 0:
        raise CorruptImage("truncated JPEG (no EOI marker at the end)")
    pos = 2
    n = len(buf)
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            raise CorruptImage(f"bad JPEG marker at byte {pos}")
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", buf[pos + 2:pos + 4])
        if marker in _SOF:
            if pos + 9 > n:
                break
            h, w = struct.unpack(">HH", buf[pos + 5:pos + 9])
            if h == 0 or w == 0:
                raise CorruptImage(f"JPEG frame size {w}x{h}")
            return h, w
        if marker == 0xDA or length < 2:  # scan data before any frame header
            break
        pos += 2 + length
    raise CorruptImage("JPEG without a frame header (SOF)")
