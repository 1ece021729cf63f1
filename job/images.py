"""Image decoding: files on disk to uint8 pixel arrays of one fixed size.

Owns: everything Pillow does for the project, and this is the only module that
imports it; a plain JPEG is decoded by ``job.jpeg`` straight into NumPy (Pillow's
pixels, without Pillow's parser and load) and only resized here. Which files count
as images, the formats read (JPEG, PNG, BMP, GIF first frame, TIFF first page,
WebP), EXIF orientation, JPEG ``draft`` (DCT-domain downscaling, several times
faster on large photos), the resize filter, the reuse of Pillow's image memory while
decoding, turning every pixel mode into RGB or grayscale, and the bad-file policy: a
file that cannot be fully decoded raises ``UnreadableImage`` with a short reason; it
is never half-decoded and no Pillow traceback escapes; one declaring over
``max_pixels`` is refused from its header. ``decode_many`` spreads the work over
threads (libjpeg-turbo and Pillow release the GIL while they decode and resize;
``job.rows`` runs them).
Never touches: TensorFlow, the model, labels, the cache, or what to do with bad
files (``job.data`` applies ``data.on_bad_image``).

Pixel rules, so the same file always gives the same pixels:

* Alpha (RGBA, LA, PA, P or L/RGB with a transparency key) is composited onto
  ``BACKGROUND``, white, the colour most viewers and scanners show behind a
  transparent pixel. Alpha is never simply dropped (that turns transparent
  pixels into whatever colour they happen to store, usually black).
* Grayscale is ITU-R 601-2 luma (Pillow's "L"): L = 0.299 R + 0.587 G + 0.114 B.
  For a colour JPEG decoded to grayscale that is the JPEG's own Y channel.
* 16-bit images (I;16, I;16B, ...) are scaled, never clipped: v8 = round(v16 / 257),
  so 0..65535 maps onto 0..255.
* 32-bit integer images (I) are read by their range: negative values are 0;
  if the maximum is <= 255 the values are already 8-bit; if it is <= 65535 they
  are scaled as 16-bit; otherwise they are scaled by the image's own maximum.
* Float images (F) whose maximum is <= 1.0 are fractions, scaled by 255; larger
  ones follow the rule for I. NaN is 0.
* Resizing ignores the aspect ratio (like Keras ``image_dataset_from_directory``)
  and uses ``RESAMPLE`` with ``REDUCING_GAP``; a JPEG is first decoded at the
  smallest DCT scale (1/2, 1/4, 1/8) that is still at least the target size.

Example:
    >>> pixels = decode("cat.jpg", size=(64, 64), color_mode="rgb")   # doctest: +SKIP
    >>> pixels.shape, pixels.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from job import jpeg, rows
from job.errors import DataError, printable_path
from job.machine import available_cpus
from job.spec import DataSpec

# A truncated file must fail, not decode with a grey or black bottom half. This is
# Pillow's default; it is set here because this module owns that decision.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's two-line warning over 89 megapixels is noise next to our own max_pixels, which
# refuses such a file in one line; Pillow itself still refuses over 179 megapixels.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

MAX_PIXELS = DataSpec.max_image_pixels
"""Default ``max_pixels``: ``data.max_image_pixels``'s default (its reason is in job.spec)."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                              ".webp"})
"""File name endings listed as images (compared in lower case)."""

COLOR_MODES = ("rgb", "grayscale")
"""Output channels: 3 for rgb, 1 for grayscale."""

BACKGROUND = (255, 255, 255)
"""RGB that transparent pixels are composited onto: white, what viewers show."""

RESAMPLE = Image.Resampling.BILINEAR
"""Resize filter (Pillow's is antialiased when downscaling). On 512x384 JPEGs to
128x128, decode plus resize runs 10% faster than with BICUBIC (774 vs 702 images/s
on one core), where resizing costs as much as decoding; against LANCZOS its mean
error is 0.52 grey levels against BICUBIC's 0.35, well below what training notices."""

REDUCING_GAP = 1.0
"""Pillow first box-reduces each axis by the largest integer factor that keeps it at
least the target size, then resamples the rest. On 512x384 JPEGs to 128x128 (drafted
to 256x192, so the width halves by a box) decode plus resize runs 20% faster than with
3.0 (1.07 vs 1.33 ms a photo), and on 2048x1536 images 30% faster; the mean error
against a full decode with LANCZOS stays under one grey level either way (0.79 vs 0.76,
and 0.66 vs 0.64), where Keras's loader (no antialiasing) is at 3.0."""

FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
"""Pillow formats opened; anything else, whatever its extension, is not an image.
(JPEG includes MPO, the multi-picture JPEG that many phone cameras write.)"""

POOLED_BLOCKS_PER_THREAD = 4
"""Freed image buffers Pillow keeps for reuse while ``decode_many`` runs, per thread."""
PLAIN_BYTES_PER_PIXEL = 4
"""A plain JPEG is read whole into memory only up to this many bytes per pixel of
``max_pixels``, about what decoding an image at the limit takes: a larger file (huge,
or padded) goes to Pillow, which refuses an image over the limit from its header."""
IN_PROCESS_BELOW = 16
"""Images: fewer than this are decoded in the calling thread alone."""

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_EXIF_ORIENTATION = 0x0112


class UnreadableImage(DataError):
    """A file that cannot be decoded as an image; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(os.fspath(path), reason)
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{printable_path(self.path)}: unreadable image: {self.reason}"


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a visible file name with an image extension; looks at the name only.

    Example:
        >>> is_image_file("cats/1.JPG"), is_image_file("cats/.1.jpg"), is_image_file("a.txt")
        (True, False, False)
    """
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def decode(path: str | os.PathLike[str], *, size: tuple[int, int], color_mode: str,
           max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one image file to uint8 pixels of exactly ``size``.

    Args:
        path: the image file.
        size: (height, width) of the result in pixels.
        color_mode: "rgb" for (height, width, 3), "grayscale" for (height, width, 1).
        max_pixels: most pixels (width x height, after JPEG draft) to decode; 0: no limit.

    Raises:
        UnreadableImage: the file is missing, empty, truncated, corrupt, not an
            image, over ``max_pixels``, or in a mode that cannot be turned into RGB.

    Example:
        >>> decode("scan.png", size=(32, 48), color_mode="grayscale").shape  # doctest: +SKIP
        (32, 48, 1)
    """
    height, width = _check_options(size, color_mode)
    try:
        file_bytes = os.stat(path).st_size
        if file_bytes == 0:
            raise UnreadableImage(path, "zero-byte file")
        pixels = _decode(path, width=width, height=height, color_mode=color_mode,
                         max_pixels=max_pixels, file_bytes=file_bytes)
    except (UnreadableImage, MemoryError):
        raise
    except Exception as error:
        # A hostile or damaged file can make a Pillow plugin raise almost anything
        # (OSError, SyntaxError, struct.error, IndexError...). Whatever it is, it is a
        # property of this file, so it is reported as this file's problem.
        raise UnreadableImage(path, _reason(error, path)) from error
    return pixels if color_mode == "rgb" else pixels[:, :, np.newaxis]


def decode_many(paths: Sequence[str | os.PathLike[str]], *, size: tuple[int, int],
                color_mode: str, workers: int = 0, out: np.ndarray | None = None,
                max_pixels: int = MAX_PIXELS,
                ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode many files, in parallel threads when there are enough of them.

    Threads, not processes: libjpeg-turbo and Pillow release the GIL while they
    decode and resize, so threads scale across cores (2 threads: 1.85x one on
    2,000 512x384 JPEGs, where Pillow's decode alone gets 1.9x) without a process
    pool's start-up and pickling of results (a forkserver pool of 2 gained
    nothing over 1 on the same files). Each
    thread writes its rows straight into one preallocated array, so memory is
    the result and nothing more, whatever the number of paths. On Ctrl-C the
    threads stop between images and are not waited for.

    Args:
        paths: image files.
        size: (height, width) of every result.
        color_mode: "rgb" or "grayscale".
        workers: decoder threads; 0 means one per CPU this process may use;
            1 decodes in the calling thread. Fewer than ``IN_PROCESS_BELOW``
            paths are always decoded in the calling thread.
        out: where to write, shape (len(paths), height, width, channels), uint8;
            e.g. ``numpy.lib.format.open_memmap(...)`` to decode straight into an
            ``.npy`` file instead of memory. None: a new array.
        max_pixels: as for ``decode``: larger images are bad files, never decoded.

    Returns:
        ``(pixels, kept, bad)``: pixels of the decodable files in input order,
        shape (len(kept), height, width, channels), the first rows of ``out``
        when given; ``kept``, their indices into ``paths``; ``bad``,
        ``(path, reason)`` for each unreadable file, in input order.

    Example:
        >>> pixels, kept, bad = decode_many(["a.png", "empty.jpg"], size=(8, 8),
        ...                                 color_mode="rgb")        # doctest: +SKIP
        >>> pixels.shape, kept, bad
        ((1, 8, 8, 3), [0], [('empty.jpg', 'zero-byte file')])
    """
    height, width = _check_options(size, color_mode, workers=workers)
    names = [os.fspath(p) for p in paths]
    pixels = _output(out, shape=(len(names), height, width, 3 if color_mode == "rgb" else 1))
    workers = workers or available_cpus()
    decode_one = functools.partial(decode, size=(height, width), color_mode=color_mode,
                                   max_pixels=max_pixels)
    threads = 1 if len(names) < IN_PROCESS_BELOW else workers
    reasons = _decode_rows(pixels, names, decode_one=decode_one, threads=threads)
    return _compact(pixels, names, reasons)


def _decode_rows(pixels: np.ndarray, names: list[str], *,
                 decode_one: Callable[[str], np.ndarray], threads: int) -> list[str | None]:
    """Decode file ``names[row]`` into ``pixels[row]`` on ``threads`` threads; returns
    each row's reason when it is a bad file, None when it decoded."""
    reasons: list[str | None] = [None] * len(names)

    def decode_row(row: int) -> None:
        try:
            pixels[row] = decode_one(names[row])
        except UnreadableImage as error:
            reasons[row] = error.reason

    with reusing_image_memory(blocks=POOLED_BLOCKS_PER_THREAD * threads):
        rows.fill(len(names), decode_row, threads=threads)
    return reasons


@contextlib.contextmanager
def reusing_image_memory(*, blocks: int) -> Iterator[None]:
    """Pillow keeps up to ``blocks`` freed image buffers for the next images, then frees them.

    Each photo takes three (the decoded pixels, the reduced and the resized image), and
    by default Pillow returns every one to the system and asks again for the next:
    fresh pages, faulted in one by one, and every unmapping interrupts the other cores
    running this process's threads. On 512x384 photos and two threads that cost about
    4% of the decode (0.55 against 0.53 ms a photo, eight paired runs; nothing
    measurable on one thread). On the way out the pool shrinks back to what it
    was (none, unless PILLOW_BLOCKS_MAX set one), so a decode leaves no buffers behind,
    however large its images.
    """
    before = Image.core.get_blocks_max()
    Image.core.set_blocks_max(max(before, blocks))
    try:
        yield
    finally:
        Image.core.set_blocks_max(before)  # frees the buffers kept beyond it


def _output(out: np.ndarray | None, *, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The array to decode into: ``out`` once checked against ``shape``, else a new one."""
    if out is None:
        return np.empty(shape, dtype=np.uint8)
    if out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}: expected {shape} "
                         "and uint8 (one row per path, at the requested size and mode).")
    return out


def _compact(pixels: np.ndarray, names: list[str], reasons: list[str | None],
             ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """``decode_many``'s result: the decoded rows first, their indices, the bad files."""
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    # Close the gaps left by bad files in place: a fancy-indexed copy would double memory.
    for row, index in enumerate(kept):
        if row != index:
            pixels[row] = pixels[index]
    bad = [(names[i], reason) for i, reason in enumerate(reasons) if reason is not None]
    return pixels[:len(kept)], kept, bad


# --- one file ------------------------------------------------------------------------


def _check_options(size: tuple[int, int], color_mode: str, *, workers: int = 0) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"size={size!r} is invalid: expected (height, width), two positive "
                         "integers, e.g. (64, 64).")
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode={color_mode!r} is invalid: expected one of "
                         f"{', '.join(COLOR_MODES)}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers={workers!r} is invalid: expected 0 (one per CPU) or a "
                         "positive number of threads.")
    return size[0], size[1]


def _decode(path: str | os.PathLike[str], *, width: int, height: int, color_mode: str,
            max_pixels: int, file_bytes: int) -> np.ndarray:
    plain = None
    if not max_pixels or file_bytes <= PLAIN_BYTES_PER_PIXEL * max_pixels:
        # A larger file is never read whole: Pillow reads its header alone before it decides.
        plain = _decode_plain_jpeg(path, width=width, height=height, color_mode=color_mode,
                                   max_pixels=max_pixels)
    if plain is not None:
        return plain
    with Image.open(path, formats=FORMATS) as image:
        declared, box = image.size, None
        if image.format in ("JPEG", "MPO"):
            # The orientation must be known before draft: draft scales the image as
            # stored, and a 90-degree orientation swaps which side becomes the width.
            # A JPEG's EXIF is parsed at open, so reading it does not decode pixels.
            orientation = _orientation(image)
            stored = _stored_size(width=width, height=height, orientation=orientation)
            drafted = image.draft("RGB" if color_mode == "rgb" else "L", stored)
            # draft rounds its size up; box is the part of that which is real image.
            box = drafted[1] if drafted else None
            _check_pixels(path, declared=declared, drafted=image.size, max_pixels=max_pixels)
            image.load()
        else:
            _check_pixels(path, declared=declared, drafted=declared, max_pixels=max_pixels)
            # Load first: some formats (PNG) keep EXIF after the pixel data, and a
            # decode error must surface from the load, not from reading tags.
            image.load()
            orientation = _orientation(image)
            stored = _stored_size(width=width, height=height, orientation=orientation)
        converted = _to_color_mode(image, color_mode)
    return _resized(converted, stored=stored, box=box, orientation=orientation)


def _decode_plain_jpeg(path: str | os.PathLike[str], *, width: int, height: int,
                       color_mode: str, max_pixels: int) -> np.ndarray | None:
    """A plain JPEG (``job.jpeg``) decoded without Pillow's parser and load, to the
    pixels Pillow gives; None for every other file, which Pillow then decodes. It reads
    the file whole: ``_decode`` asks only for files within ``PLAIN_BYTES_PER_PIXEL``."""
    with open(path, "rb") as handle:
        if handle.read(len(jpeg.MAGIC)) != jpeg.MAGIC:
            return None
        data = jpeg.MAGIC + handle.read()
    frame = jpeg.frame(data)
    if frame is None or (Image.MAX_IMAGE_PIXELS is not None
                         and frame.width * frame.height > Image.MAX_IMAGE_PIXELS):
        return None  # Pillow's limits on such a file apply: its own path decides
    stored = _stored_size(width=width, height=height, orientation=frame.orientation)
    scale = jpeg.draft_scale(frame, stored)
    _check_pixels(path, declared=(frame.width, frame.height),
                  drafted=(-(-frame.width // scale), -(-frame.height // scale)),
                  max_pixels=max_pixels)
    pixels = jpeg.decode(data, frame, scale=scale, grey=color_mode == "grayscale")
    if pixels is None:
        return None
    mode = "L" if pixels.ndim == 2 else "RGB"
    image = Image.frombuffer(mode, (pixels.shape[1], pixels.shape[0]), pixels, "raw", mode, 0, 1)
    # As Pillow's draft says: the part of the rounded-up image that is real image.
    box = (0, 0, frame.width / scale, frame.height / scale)
    return _resized(image, stored=stored, box=box, orientation=frame.orientation)


def _resized(image: Image.Image, *, stored: tuple[int, int],
             box: tuple[float, float, float, float] | None, orientation: int) -> np.ndarray:
    """``image`` resized to ``stored`` (from ``box`` of it), then shown upright, as uint8."""
    if box == (0, 0, *image.size):
        box = None  # draft kept the full size (upscaling, or already small)
    if image.size != stored or box is not None:
        image = image.resize(stored, RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
    if orientation in _TRANSPOSE:
        # Transposing after the resize touches only the small image; flips and
        # quarter turns commute exactly with the (symmetric) resize.
        image = image.transpose(_TRANSPOSE[orientation])
    return np.array(image, dtype=np.uint8)


def _check_pixels(path: str | os.PathLike[str], *, declared: tuple[int, int],
                  drafted: tuple[int, int], max_pixels: int) -> None:
    """Refuse, from its header alone, an image that would decode to more than
    ``max_pixels``: ``drafted`` is (width, height) after a JPEG's draft, what its
    decode allocates (``declared`` for every other file)."""
    width, height = drafted
    if not max_pixels or width * height <= max_pixels:
        return
    size = f"{declared[0]}x{declared[1]} pixels"
    if drafted != declared:
        size += f" ({width}x{height} after JPEG draft scaling)"
    raise UnreadableImage(path, f"{size} is over data.max_image_pixels={max_pixels}; resize "
                                "it or raise the limit")


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation 1..8; 1 (as stored) when absent or unreadable."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        # Damaged EXIF does not damage the pixels; viewers show such files as stored.
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _stored_size(*, width: int, height: int, orientation: int) -> tuple[int, int]:
    """Pillow (width, height) to resize to before orienting, in the file's own layout."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _to_color_mode(image: Image.Image, color_mode: str) -> Image.Image:
    """Any supported Pillow mode to "RGB" (rgb) or "L" (grayscale), per the module rules."""
    target = "RGB" if color_mode == "rgb" else "L"
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        image = Image.fromarray(_to_eight_bit(np.asarray(image), mode=mode))  # 2-D uint8: L
    elif mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
            mode in ("P", "L", "RGB") and "transparency" in image.info):
        image = _composite(image.convert("RGBA"))
    elif mode == "P":
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode not in ("RGB", "L"):
        try:
            image = image.convert("RGB")  # CMYK, YCbCr, RGBX, HSV
        except ValueError:
            raise ValueError(f"unsupported pixel mode {mode}") from None
    return image if image.mode == target else image.convert(target)


def _composite(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, BACKGROUND)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _to_eight_bit(values: np.ndarray, *, mode: str) -> np.ndarray:
    """16/32-bit integer or float pixels to uint8 by scaling (see the module rules)."""
    if mode in _SIXTEEN_BIT_MODES:
        return _scale(values.astype(np.int64), 65535)
    if mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        values = np.maximum(values, 0.0)
        if values.size and values.max() <= 1.0:
            return np.rint(values * 255.0).astype(np.uint8)
        values = np.rint(values)
    values = np.maximum(values.astype(np.int64), 0)
    top = int(values.max()) if values.size else 0
    if top <= 255:
        return values.astype(np.uint8)
    return _scale(values, 65535 if top <= 65535 else top)


def _scale(values: np.ndarray, top: int) -> np.ndarray:
    """Round(values * 255 / top) in integers: exact, and 65535 -> 255, 32768 -> 128."""
    return ((values * 255 + top // 2) // top).astype(np.uint8)


def _reason(error: Exception, path: str | os.PathLike[str]) -> str:
    """A few words for the user: what is wrong with the file, not where Pillow noticed."""
    text = printable_path(str(error))  # a hostile file can put anything in Pillow's message
    if isinstance(error, Image.DecompressionBombError):
        return f"too many pixels to decode safely ({text})"
    if isinstance(error, UnidentifiedImageError):
        return ("not an image (cannot identify image file as JPEG, PNG, BMP, GIF, TIFF or "
                "WebP)")
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, IsADirectoryError):
        return "a directory, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, EOFError) or "truncated" in text.lower() or _webp_truncated(path):
        return "truncated file"
    if text.startswith("unsupported pixel mode"):
        return text
    if isinstance(error, (OSError, SyntaxError)):
        return f"corrupt image data ({text})"
    return f"cannot decode ({type(error).__name__}: {text})"


def _webp_truncated(path: str | os.PathLike[str]) -> bool:
    """Pillow's WebP decoder fails a short file without saying so; its RIFF header does."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(12)
            actual = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WEBP":
        return False
    return actual < int.from_bytes(header[4:8], "little") + 8
