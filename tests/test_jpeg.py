"""Plain JPEGs decoded without Pillow's parser give its pixels; other files go to Pillow."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job import images, jpeg
from job.images import UnreadableImage, decode


def photo(size: tuple[int, int], *, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Colour waves with noise and a red corner: detail in every channel, and a top-left."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    array = np.stack([128 + 100 * np.sin(x / 13) * np.cos(y / 17), x * 255 / width,
                      y * 255 / height], axis=-1) + rng.normal(0, 8, (height, width, 3))
    array[:height // 4, :width // 4] = (255, 0, 0)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).convert(mode)


def jpeg_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **params)
    return buffer.getvalue()


def with_exif_orientation(image: Image.Image, orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def by_pillow(path: Path, monkeypatch, **options) -> np.ndarray:
    """``decode`` as it was before this module: Pillow alone."""
    with monkeypatch.context() as patch:
        patch.setattr(images, "_decode_plain_jpeg", lambda *args, **kwargs: None)
        return decode(path, **options)


def plain(path: Path, *, size: tuple[int, int], color_mode: str) -> np.ndarray | None:
    """The plain-JPEG path alone: None when it declines the file."""
    return images._decode_plain_jpeg(path, width=size[1], height=size[0],
                                     color_mode=color_mode, max_pixels=0)


def with_segment(data: bytes, marker: int, body: bytes) -> bytes:
    """``data`` with one more APPn segment right after the start-of-image marker."""
    return data[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body + data[2:]


VARIANTS = {
    # name: (Pillow size, mode, save parameters)
    "4:2:0": ((333, 221), "RGB", {"quality": 90, "subsampling": 2}),
    "4:2:2": ((333, 221), "RGB", {"quality": 90, "subsampling": 1}),
    "4:4:4": ((333, 221), "RGB", {"quality": 95, "subsampling": 0}),
    "progressive": ((401, 299), "RGB", {"quality": 85, "progressive": True}),
    "restart markers": ((320, 240), "RGB", {"quality": 90, "restart_marker_blocks": 3}),
    "optimized tables": ((257, 193), "RGB", {"quality": 75, "optimize": True}),
    "grey": ((333, 221), "L", {"quality": 90}),
    "tiny": ((7, 5), "RGB", {"quality": 90}),
}
SIZES = [(128, 128), (48, 40), (100, 77), (300, 400), (1, 1)]


@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_plain_jpegs_decode_to_exactly_pillows_pixels(tmp_path, monkeypatch, variant,
                                                      color_mode):
    size, mode, params = VARIANTS[variant]
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_bytes(photo(size, mode=mode), **params))

    for target in SIZES:  # scales 1/8 to 1/2, and upscaling
        fast = plain(path, size=target, color_mode=color_mode)

        assert fast is not None, f"declined at {target}"
        expected = by_pillow(path, monkeypatch, size=target, color_mode=color_mode)
        assert np.array_equal(decode(path, size=target, color_mode=color_mode), expected)
        assert np.array_equal(fast.reshape(expected.shape), expected), f"differs at {target}"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_read_from_the_markers_as_pillow_reads_it(
        tmp_path, monkeypatch, orientation):
    image = photo((240, 96))
    path = tmp_path / "turned.jpg"
    path.write_bytes(jpeg_bytes(image, quality=90, exif=with_exif_orientation(image, orientation)))

    assert jpeg.frame(path.read_bytes()).orientation == orientation
    fast = plain(path, size=(40, 56), color_mode="rgb")
    assert fast is not None
    assert np.array_equal(fast, by_pillow(path, monkeypatch, size=(40, 56), color_mode="rgb"))


def test_orientation_outside_one_to_eight_reads_as_stored(tmp_path):
    image = photo((64, 48))
    data = jpeg_bytes(image, exif=with_exif_orientation(image, 9))

    assert jpeg.frame(data).orientation == 1


def test_exif_written_big_endian_with_other_tags_is_read(tmp_path):
    # A camera's IFD: make, model (stored past the entries) and the orientation, big-endian.
    entries = [(0x010F, 2, 6, 38), (0x0110, 2, 8, 44), (0x0112, 3, 1, 6 << 16)]
    ifd = struct.pack(">H", len(entries)) + b"".join(
        struct.pack(">HHII", tag, kind, count, value) for tag, kind, count, value in entries)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd + b"\0\0\0\0" + b"Maker\0" + b"Model 7\0"
    data = with_segment(jpeg_bytes(photo((64, 48))), 0xE1, b"Exif\0\0" + tiff)

    assert jpeg.frame(data).orientation == 6
    with Image.open(io.BytesIO(data)) as pillow:
        assert pillow.getexif()[0x0112] == 6


def test_a_camera_exif_with_a_thumbnail_and_a_sub_directory_is_read(tmp_path, monkeypatch):
    # What cameras write: IFD0 with a pointer to the EXIF sub-directory, then IFD1 with a
    # JPEG thumbnail inside the segment (its own start and end markers included).
    thumbnail = jpeg_bytes(photo((16, 12)), quality=70)
    ifd0 = [(0x0112, 3, 1, 3 << 16), (0x8769, 4, 1, 0)]  # orientation 3, EXIF IFD pointer
    start1 = 8 + 2 + 12 * len(ifd0) + 4
    sub = struct.pack(">H", 1) + struct.pack(">HHII", 0x9000, 7, 4, int.from_bytes(b"0232",
                                                                                "big"))
    sub += b"\0\0\0\0"
    start_sub = start1
    start_ifd1 = start_sub + len(sub)
    ifd1_size = 2 + 12 * 2 + 4
    ifd0[1] = (0x8769, 4, 1, start_sub)
    ifd1 = struct.pack(">H", 2) + struct.pack(">HHII", 0x0201, 4, 1, start_ifd1 + ifd1_size)
    ifd1 += struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail)) + b"\0\0\0\0"
    tiff = (b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", len(ifd0))
            + b"".join(struct.pack(">HHII", *entry) for entry in ifd0)
            + struct.pack(">I", start_ifd1) + sub + ifd1 + thumbnail)
    path = tmp_path / "camera.jpg"
    path.write_bytes(with_segment(jpeg_bytes(photo((96, 64)), quality=90), 0xE1,
                                  b"Exif\0\0" + tiff))

    assert jpeg.frame(path.read_bytes()).orientation == 3
    with Image.open(path) as pillow:
        assert pillow.getexif()[0x0112] == 3
    fast = plain(path, size=(24, 32), color_mode="rgb")
    assert fast is not None
    assert np.array_equal(fast, by_pillow(path, monkeypatch, size=(24, 32), color_mode="rgb"))


def without_adobe(data: bytes) -> bytes:
    """``data`` with its Adobe segment cut out (what some encoders write for RGB JPEGs)."""
    start = data.index(b"\xff\xee")
    end = start + 2 + int.from_bytes(data[start + 2:start + 4], "big")
    assert data[start + 4:start + 9] == b"Adobe"
    return data[:start] + data[end:]


DECLINED = {
    # name: how the file is made from a plain 64x48 JPEG's bytes
    "CMYK": lambda data: jpeg_bytes(photo((64, 48), mode="CMYK")),
    "Adobe segment": lambda data: with_segment(data, 0xEE, b"Adobe\0\x64\0\0\0\0\x01"),
    "multi-picture index": lambda data: with_segment(data, 0xE2, b"MPF\0II*\0"),
    "two EXIF segments": lambda data: with_segment(
        with_segment(data, 0xE1, b"Exif\0\0II*\0\x08\0\0\0\0\0\0\0\0\0"),
        0xE1, b"Exif\0\0II*\0\x08\0\0\0\0\0\0\0\0\0"),
    "XMP without EXIF orientation": lambda data: with_segment(
        data, 0xE1, b"http://ns.adobe.com/xap/1.0/\0<x tiff:Orientation=\"3\"/>"),
    "damaged EXIF": lambda data: with_segment(data, 0xE1, b"Exif\0\0garbage"),
    "EXIF value past its end": lambda data: with_segment(
        data, 0xE1, b"Exif\0\0II*\0\x08\0\0\0\x01\0\x0f\x01\x02\0\x50\0\0\0\xf0\0\0\0\0\0\0\0"),
    "RGB components without an Adobe segment": lambda data: without_adobe(
        jpeg_bytes(photo((64, 48)), keep_rgb=True)),
    "arithmetic coding": lambda data: data.replace(b"\xff\xc0", b"\xff\xc9", 1),
    "12-bit samples": lambda data: data.replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c",
                                                1),
    "junk between segments": lambda data: data[:2] + b"\x00" + data[2:],
    "no scan": lambda data: data[:data.index(b"\xff\xda")],
    "not a JPEG": lambda data: b"\x89PNG\r\n\x1a\n" + data[8:],
}


@pytest.mark.parametrize("case", DECLINED)
def test_files_that_are_not_plain_jpegs_are_left_to_pillow(tmp_path, case):
    data = DECLINED[case](jpeg_bytes(photo((64, 48)), quality=90))
    path = tmp_path / "odd.jpg"
    path.write_bytes(data)

    assert jpeg.frame(data) is None
    assert plain(path, size=(8, 8), color_mode="rgb") is None


def test_xmp_beside_an_exif_orientation_is_plain_as_pillow_reads_exif_first(tmp_path,
                                                                           monkeypatch):
    image = photo((64, 48))
    data = jpeg_bytes(image, exif=with_exif_orientation(image, 8))
    path = tmp_path / "edited.jpg"
    path.write_bytes(with_segment(data, 0xE1,
                                  b"http://ns.adobe.com/xap/1.0/\0<x tiff:Orientation=\"3\"/>"))

    assert jpeg.frame(path.read_bytes()).orientation == 8
    assert np.array_equal(plain(path, size=(16, 16), color_mode="rgb"),
                          by_pillow(path, monkeypatch, size=(16, 16), color_mode="rgb"))


def test_a_truncated_jpeg_is_left_to_pillow_which_reports_it(tmp_path):
    data = jpeg_bytes(photo((320, 240)), quality=90)
    path = tmp_path / "half.jpg"
    path.write_bytes(data[:len(data) // 2])

    frame = jpeg.frame(path.read_bytes())
    assert frame is not None  # the header is whole
    assert jpeg.decode(path.read_bytes(), frame, scale=1, grey=False) is None
    with pytest.raises(UnreadableImage, match="truncated file"):
        decode(path, size=(32, 32), color_mode="rgb")


def test_a_jpeg_over_pillows_own_limit_gets_pillows_refusal(tmp_path, monkeypatch):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_bytes(photo((100, 100))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    with pytest.raises(UnreadableImage, match="too many pixels"):
        decode(path, size=(8, 8), color_mode="rgb")


def test_a_jpeg_over_max_pixels_after_draft_is_refused_with_both_sizes(tmp_path):
    path = tmp_path / "large.jpg"
    path.write_bytes(jpeg_bytes(photo((400, 300))))

    with pytest.raises(UnreadableImage, match=r"400x300 pixels \(200x150 after JPEG draft "
                                              r"scaling\) is over data.max_image_pixels=1000"):
        decode(path, size=(150, 150), color_mode="rgb", max_pixels=1000)


def test_a_file_larger_than_the_pixel_limit_allows_is_not_read_whole(tmp_path, monkeypatch):
    # A small image padded with megabytes after its end: only Pillow, which reads the
    # header first, may open it, so a huge or hostile file never lands in memory whole.
    path = tmp_path / "padded.jpg"
    path.write_bytes(jpeg_bytes(photo((64, 48))) + bytes(200_000))
    limit = 64 * 48

    read_whole = []
    original = images._decode_plain_jpeg
    monkeypatch.setattr(images, "_decode_plain_jpeg", lambda path, **options: (
        read_whole.append(path) or original(path, **options)))

    pixels = decode(path, size=(16, 16), color_mode="rgb", max_pixels=limit)

    assert read_whole == []
    assert np.array_equal(pixels, by_pillow(path, monkeypatch, size=(16, 16), color_mode="rgb"))
    # Within the bound (no limit), the same file is read whole by the plain path.
    decode(path, size=(16, 16), color_mode="rgb", max_pixels=0)
    assert read_whole == [path]


def outcome(decoder, *args) -> np.ndarray | str:
    """The pixels at 24x24 RGB, or the reason the file is unreadable."""
    try:
        return decoder(*args, size=(24, 24), color_mode="rgb")
    except UnreadableImage as error:
        return error.reason


def test_damaged_jpegs_give_what_pillow_alone_gives(tmp_path, monkeypatch):
    # Bytes flipped in the header and in the data: whatever each file is, the plain path
    # either gives Pillow's pixels or steps aside, never a third answer.
    original = jpeg_bytes(photo((96, 64)), quality=85)
    scan = original.index(b"\xff\xda")
    rng = random.Random(7)
    outcomes = set()
    for number in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(2, scan + 40 if number % 2 else len(data))
            data[where] = rng.randrange(256)
        path = tmp_path / f"damaged-{number}.jpg"
        path.write_bytes(bytes(data))
        results = [outcome(decode, path), outcome(by_pillow, path, monkeypatch)]
        if isinstance(results[0], str) or isinstance(results[1], str):
            assert results[0] == results[1]
        else:
            assert np.array_equal(*results)
        outcomes.add((type(results[0]).__name__,
                      plain(path, size=(24, 24), color_mode="rgb") is None))
    # Both kinds of outcome happened, and files the plain path declined were among them.
    assert {("str", True), ("ndarray", True), ("ndarray", False)} <= outcomes


def test_the_photo_set_kind_of_file_takes_the_plain_path(tmp_path):
    # What cameras and most tools write (JFIF, EXIF with an orientation, 4:2:0) must not
    # quietly fall back to Pillow: that would be the slow path for nearly every photo.
    image = photo((512, 384))
    path = tmp_path / "camera.jpg"
    path.write_bytes(jpeg_bytes(image, quality=90, exif=with_exif_orientation(image, 1)))

    assert plain(path, size=(128, 128), color_mode="rgb") is not None
