"""Decoding within bounds: images over data.max_image_pixels, peak memory, and Ctrl-C.

The memory and interrupt tests run the decoder in a fresh Python process: Pillow
allocates in C, out of tracemalloc's sight, so peak memory is the child's own
``ru_maxrss``; and SIGINT must reach a real main thread waiting on real decoder
threads.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job import data, images
from job.errors import DataError, SpecError
from job.spec import DataSpec, from_dict
from tests.conftest import ROOT
from tests.test_data import data_spec, solid_tree

BOMB_SIDE = 13_000
"""Pixels per side of the PNG bomb: 169 megapixels, under Pillow's own refusal (179 M)."""
PEAK_BOUND_MB = 300
"""MiB of peak RSS allowed while a folder of bombs is decoded: an interpreter with numpy and
Pillow, and far below one decoded bomb (13000 x 13000 RGBA is 676 MB, 2.1 GB at peak)."""


def png_bomb(path: Path, *, width: int, height: int) -> Path:
    """An RGBA PNG of zeros: well under a megabyte on disk, ``width x height`` when decoded."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 4 * width)  # filter byte, then RGBA
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png", width=BOMB_SIDE,
                    height=BOMB_SIDE)


# --- the limit --------------------------------------------------------------------------


def test_an_image_over_max_pixels_is_a_bad_image_saying_its_size_and_the_key(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (200, 100), (9, 9, 9)).save(path)

    with pytest.raises(images.UnreadableImage) as raised:
        images.decode(path, size=(8, 8), color_mode="rgb", max_pixels=19_999)
    pixels = images.decode(path, size=(8, 8), color_mode="rgb", max_pixels=20_000)
    unlimited = images.decode(path, size=(8, 8), color_mode="rgb", max_pixels=0)

    assert raised.value.reason == ("200x100 pixels is over data.max_image_pixels=19999; "
                                   "resize it or raise the limit")
    assert np.array_equal(pixels, unlimited)


def test_a_jpeg_is_measured_after_draft_scaling(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (800, 600), (200, 10, 10)).save(path, quality=90)

    # To 64x64, the JPEG decodes at 1/8 scale: 100x75 pixels, under the limit.
    small = images.decode(path, size=(64, 64), color_mode="rgb", max_pixels=10_000)
    # To 300x400 it decodes at 1/2 scale: 400x300 pixels, over it.
    with pytest.raises(images.UnreadableImage) as raised:
        images.decode(path, size=(300, 400), color_mode="rgb", max_pixels=10_000)

    assert small.shape == (64, 64, 3)
    assert raised.value.reason.startswith("800x600 pixels (400x300 after JPEG draft scaling) "
                                          "is over data.max_image_pixels=10000")


def test_the_default_limit_leaves_a_48_megapixel_camera_jpeg_decodable(tmp_path):
    path = tmp_path / "camera.jpg"
    Image.new("RGB", (8000, 6000), (10, 120, 200)).save(path, quality=80)
    assert DataSpec.max_image_pixels < 8000 * 6000  # only draft scaling lets it in

    pixels = images.decode(path, size=(64, 64), color_mode="rgb")

    assert pixels.shape == (64, 64, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_decode_many_reports_images_over_the_limit_as_bad(tmp_path, workers):
    paths = []
    for index in range(20):  # enough for decoder threads
        path = tmp_path / f"{index:02d}.png"
        Image.new("RGB", (40, 30) if index % 5 else (400, 300), (index, 0, 0)).save(path)
        paths.append(path)

    pixels, kept, bad = images.decode_many(paths, size=(8, 8), color_mode="rgb",
                                           workers=workers, max_pixels=50_000)

    assert kept == [i for i in range(20) if i % 5]
    assert [path for path, _ in bad] == [str(paths[i]) for i in (0, 5, 10, 15)]
    assert all("400x300 pixels is over data.max_image_pixels=50000" in r for _, r in bad)
    assert len(pixels) == 16


def big_image_tree(root: Path) -> Path:
    """The solid tree with one 300x200 PNG in red/: 60,000 pixels."""
    solid_tree(root, per_class=2)
    Image.new("RGB", (300, 200), (255, 0, 0)).save(root / "red" / "big.png")
    return root


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_skip_lists_an_image_over_the_limit_with_its_reason(tmp_path, cache, capsys):
    root = big_image_tree(tmp_path / "train")
    items = data.list_images(root, key="data.train_dir")
    spec = data_spec(root, cache=cache, max_image_pixels=50_000)

    decoded = data.decode(items, spec=spec, cache_dir=tmp_path / "cache")

    assert decoded.bad == ((str(root / "red" / "big.png"),
                            "300x200 pixels is over data.max_image_pixels=50000; resize it or "
                            "raise the limit"),)
    assert len(decoded.labels) == 6
    assert "big.png: 300x200 pixels is over" in capsys.readouterr().err


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_fail_stops_at_an_image_over_the_limit(tmp_path, cache):
    root = big_image_tree(tmp_path / "train")
    items = data.list_images(root, key="data.train_dir")
    spec = data_spec(root, cache=cache, max_image_pixels=50_000, on_bad_image="fail")

    with pytest.raises(DataError, match=r"big\.png: unreadable image: 300x200 pixels is over "
                                        r"data\.max_image_pixels=50000"):
        data.decode(items, spec=spec, cache_dir=tmp_path / "cache")


def test_the_disk_cache_is_keyed_by_the_limit(tmp_path, capsys):
    root = big_image_tree(tmp_path / "train")
    items = data.list_images(root, key="data.train_dir")
    cache_dir = tmp_path / "cache"

    limited = data.decode(items, spec=data_spec(root, cache="disk", max_image_pixels=50_000),
                          cache_dir=cache_dir)
    raised = data.decode(items, spec=data_spec(root, cache="disk", max_image_pixels=60_000),
                         cache_dir=cache_dir)

    assert len(limited.bad) == 1 and raised.bad == ()
    assert len(raised.labels) == 7
    assert len(list(cache_dir.iterdir())) == 4


def test_validate_counts_an_image_over_the_limit_as_unreadable(tmp_path):
    root = big_image_tree(tmp_path / "train")

    report = data.scan(data_spec(root, max_image_pixels=50_000), seed=1)

    assert [Path(path).name for path, _ in report.bad] == ["big.png"]
    assert "pixels is over data.max_image_pixels=50000" in report.describe()


@pytest.mark.parametrize(("value", "expected"), [
    (None, 40_000_000), (0, 0), (100_000_000, 100_000_000),
])
def test_spec_key_max_image_pixels_defaults_to_40_megapixels_and_0_disables(tmp_path, value,
                                                                           expected):
    section = {"train_dir": "images"} | ({} if value is None else {"max_image_pixels": value})

    loaded = from_dict({"name": "x", "data": section}, base_dir=tmp_path)

    assert loaded.data.max_image_pixels == expected


@pytest.mark.parametrize("value", [-1, 1.5, "40M", True])
def test_spec_refuses_a_bad_max_image_pixels(tmp_path, value):
    with pytest.raises(SpecError, match=r"data\.max_image_pixels="):
        from_dict({"name": "x", "data": {"train_dir": "d", "max_image_pixels": value}},
                       base_dir=tmp_path)


# --- peak memory --------------------------------------------------------------------------


PEAK_SCRIPT = """
import sys
from job import images
paths = sys.argv[1:]
pixels, kept, bad = images.decode_many(paths, size=(64, 64), color_mode="rgb", workers=2)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent, so a big
# test process would be counted; VmHWM belongs to this program's own memory map.
status = open("/proc/self/status").read()
peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
print(len(kept), len(bad), round(peak_kb / 1024))
print(bad[0][1] if bad else "")
"""


def test_peak_memory_decoding_a_folder_of_bombs_stays_bounded(tmp_path, bomb):
    folder = tmp_path / "bombs"
    folder.mkdir()
    paths = [shutil.copy(bomb, folder / f"bomb_{i}.png") for i in range(4)]
    paths += [str(folder / f"ok_{i}.png") for i in range(16)]  # enough for decoder threads
    for path in paths[4:]:
        Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    assert Path(paths[0]).stat().st_size < 1_000_000

    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, *map(str, paths)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=True)

    counts, reason = result.stdout.splitlines()
    kept, bad, peak_mb = counts.split()
    print(f"peak RSS decoding {len(paths)} images, 4 of them bombs: {peak_mb} MiB")
    assert int(peak_mb) < PEAK_BOUND_MB, f"peak RSS {peak_mb} MiB"
    assert (int(kept), int(bad)) == (16, 4)
    assert reason.startswith(f"{BOMB_SIDE}x{BOMB_SIDE} pixels is over data.max_image_pixels=")


# --- Ctrl-C -------------------------------------------------------------------------------


INTERRUPT_SCRIPT = """
import os, signal, sys, threading, time
import numpy as np
from job import images
path, count = sys.argv[1], int(sys.argv[2])
out = np.zeros((count, 8, 8, 3), dtype=np.uint8)

def decoded():
    return int(out.reshape(count, -1).any(axis=1).sum())

def press_ctrl_c_once_decoding_has_begun():
    while decoded() == 0:
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGINT)

at_signal = []

def on_interrupt(signum, frame):
    at_signal.append(decoded())
    raise KeyboardInterrupt

signal.signal(signal.SIGINT, on_interrupt)
threading.Thread(target=press_ctrl_c_once_decoding_has_begun, daemon=True).start()
try:
    images.decode_many([path] * count, size=(8, 8), color_mode="rgb", workers=2, out=out)
except KeyboardInterrupt:
    print("interrupted", at_signal[0], decoded(), flush=True)
    sys.exit(130)
print("finished", decoded(), decoded(), flush=True)
"""
IMAGES_TO_DECODE = 320
"""Paths the child decodes: 20 per chunk with 2 threads, some 10 s for them all."""


def test_ctrl_c_stops_decoder_threads_between_images(tmp_path):
    """SIGINT arrives once the first image is decoded; each thread may finish the image in
    hand, and then no more. Before the fix the interrupt waited for the running chunks
    (20 images each), and the process exited only after them.
    """
    path = tmp_path / "noise.png"
    noise = np.random.default_rng(0).integers(1, 256, (2000, 2000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, compress_level=1)

    result = subprocess.run([sys.executable, "-c", INTERRUPT_SCRIPT, str(path),
                             str(IMAGES_TO_DECODE)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)

    word, at_signal, at_exit = result.stdout.split()
    assert (word, result.returncode) == ("interrupted", 130), result.stderr
    assert int(at_exit) - int(at_signal) <= 2 * 2, result.stdout  # 2 threads, 2 images each
    assert int(at_exit) < IMAGES_TO_DECODE
