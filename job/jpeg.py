"""Plain JPEGs decoded by libjpeg-turbo straight into NumPy, at a DCT scale.

Owns: reading a JPEG's markers up to its first scan (the frame's size and channels,
the EXIF orientation), which files this module decodes (``frame`` says None for every
other one), and their decode through simplejpeg, which holds no GIL while it runs.
Never touches: Pillow, files (it is given the file's bytes), resizing, or what a bad
file is: for a file it declines or cannot decode it returns None, and ``job.images``
decodes that one with Pillow, which gives the pixels or the error.

Why a second decoder: it is the same libjpeg-turbo that Pillow uses, and it gives
Pillow's pixels exactly (the tests compare them), without what Pillow adds around
it in Python, under the GIL: parsing the markers at open, and a load loop that
hands the pixels over line by line into Pillow's own layout. On the 512x384 photos
of ``make bench``, ``decode_many`` (resize included) went from 950 to 997 photos a
second on one thread and from 1,656 to 1,846 on two (six paired rounds), where the
threads wait less for each other (BENCHMARKS.md, P1).

Plain means what nearly every camera, phone and image library writes, and nothing
whose pixels or orientation could come out differently here: baseline or
progressive 8-bit Huffman JPEG, one (grey) or three (YCbCr: not named R, G, B)
channels, no Adobe segment (which may declare RGB or CMYK), at most one EXIF segment that reads
cleanly, no XMP unless EXIF gives the orientation (Pillow would read XMP's), and
no multi-picture index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simplejpeg

MAGIC = b"\xff\xd8\xff"
"""A JPEG's first three bytes: start of image, then the first marker."""

_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
"""Start-of-frame markers decoded here: baseline, extended and progressive Huffman."""
_START_OF_SCAN = 0xDA
_HUFFMAN_TABLES = 0xC4
_STANDALONE = frozenset({0x01, 0xFF, *range(0xD0, 0xDA)})
"""Markers without a length: restarts, start and end of image, padding; none belongs
before the first scan."""
_EXIF = b"Exif\0\0"
_XMP = b"http://ns.adobe.com/xap/1.0/\0"
_DECLINED_APPS = ((0xEE, b"Adobe"), (0xE2, b"MPF\0"))
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                    13: 4}
"""Bytes per value of each TIFF field type that EXIF may use (Pillow reads the same)."""
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class Frame:
    """What a plain JPEG's markers say: its size as stored, channels and EXIF orientation."""

    width: int
    height: int
    channels: int
    orientation: int
    """1..8 as EXIF gives it; 1 when the file has none. Out-of-range values are 1 too."""


def frame(data: bytes) -> Frame | None:
    """The frame of a plain JPEG (see the module), from its markers; None for any other file."""
    if not data.startswith(MAGIC):
        return None
    position, size, exif, xmp = 2, None, None, False
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None  # fill bytes or junk between segments: Pillow's parser decides
        marker = data[position + 1]
        if marker == _START_OF_SCAN:
            break
        if marker in _STANDALONE:
            return None  # no segment of its own here: Pillow's parser decides
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if end <= position + 3 or end > len(data):
            return None
        body = data[position + 4:end]
        if marker in _FRAMES:
            if size is not None or len(body) < 6 or body[0] != 8:
                return None
            size = (int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"), body[5])
            if body[6:13:3] == b"RGB":
                return None  # components named R, G, B: libjpeg reads them as RGB, not YCbCr
        elif 0xC3 <= marker <= 0xCF and marker != _HUFFMAN_TABLES:
            return None  # lossless, hierarchical or arithmetic coding
        elif marker == 0xE1 and body.startswith(_EXIF):
            if exif is not None:
                return None  # Pillow joins several EXIF segments into one
            exif = body[len(_EXIF):]
        elif marker == 0xE1 and body.startswith(_XMP):
            xmp = True
        elif any(marker == app and body.startswith(tag) for app, tag in _DECLINED_APPS):
            return None
        position = end
    else:
        return None  # no scan
    if size is None or size[0] == 0 or size[1] == 0 or size[2] not in (1, 3):
        return None
    orientation = 0 if exif is None else _exif_orientation(exif)
    if orientation is None or (orientation == 0 and xmp):
        return None  # unreadable EXIF, or XMP that Pillow would take the orientation from
    return Frame(width=size[0], height=size[1], channels=size[2],
                 orientation=orientation if 1 <= orientation <= 8 else 1)


def draft_scale(frame: Frame, size: tuple[int, int]) -> int:
    """The DCT scale (1, 2, 4 or 8) that Pillow's ``draft`` picks for (width, height) ``size``:
    the largest that keeps both sides at least ``size`` (1 when none does, or to
    upscale), the image rounded up."""
    fits = min(frame.width // size[0], frame.height // size[1])
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def decode(data: bytes, frame: Frame, *, scale: int, grey: bool) -> np.ndarray | None:
    """The pixels at 1/``scale``, (height, width, 3) RGB or (height, width) grey; None
    when libjpeg-turbo reports anything, even a warning that Pillow would let pass."""
    width, height = -(-frame.width // scale), -(-frame.height // scale)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB",
                                        min_height=height, min_width=width, strict=True)
    except Exception:  # a warning in strict mode, a damaged file, memory
        return None
    if pixels.shape[:2] != (height, width):
        return None
    return pixels.reshape(height, width) if grey else pixels


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation in EXIF's first directory; 0 when it has none; None for a
    directory that does not read cleanly (Pillow may read such a one differently)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or int.from_bytes(tiff[2:4], order) != 42:
        return None
    start = int.from_bytes(tiff[4:8], order)
    if start < 8 or start + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[start:start + 2], order)
    entries = start + 2
    if entries + 12 * count + 4 > len(tiff):
        return None
    found = []
    for entry in range(entries, entries + 12 * count, 12):
        tag, kind, values = (int.from_bytes(tiff[entry:entry + 2], order),
                             int.from_bytes(tiff[entry + 2:entry + 4], order),
                             int.from_bytes(tiff[entry + 4:entry + 8], order))
        length = _TIFF_TYPE_SIZES.get(kind, 0) * values
        if kind not in _TIFF_TYPE_SIZES or (
                length > 4 and int.from_bytes(tiff[entry + 8:entry + 12], order) + length
                > len(tiff)):
            return None
        if tag == _ORIENTATION_TAG:
            if kind != 3 or values != 1:
                return None
            found.append(int.from_bytes(tiff[entry + 8:entry + 10], order))
    if len(found) > 1:
        return None
    return found[0] if found else 0
