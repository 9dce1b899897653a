"""Spec for turning any upload into the 32x32 input, and for refusing bad ones.

Every odd or broken file is generated here; nothing is read from assets/.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet import MEAN, STD, preprocess
from resnet.preprocess import ImageInputError, load_image, load_image_with_notes, to_model_input


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture()
def write(tmp_path):
    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


def rgb(size=(40, 40), colour=(200, 30, 60)) -> Image.Image:
    return Image.new("RGB", size, colour)


# ----- refused, with a sentence -------------------------------------------------------------


def test_text_file_is_not_an_image(write):
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(write("notes.png", b"hello, this is text, not pixels\n" * 10))


def test_zero_bytes_is_empty(write):
    with pytest.raises(ImageInputError, match="empty"):
        load_image(write("empty.jpg", b""))
    with pytest.raises(ImageInputError, match="empty"):
        load_image(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused(write, fmt):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_image(write(f"cut.{fmt.lower()}", data[: len(data) // 2]))


def test_one_pixel_image_is_too_small(write):
    with pytest.raises(ImageInputError, match="only 1x1 pixels"):
        load_image(write("dot.png", encode(rgb((1, 1)), "PNG")))


def test_decompression_bomb_refused_from_header_before_decoding(write, monkeypatch):
    # PIL's own guard may be switched off by anyone; ours must not depend on it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    path = write("bomb.png", png_header_only(20000, 20000))
    assert path.stat().st_size < 1000
    with pytest.raises(ImageInputError, match="20000x20000 pixels"):
        load_image(path)
    assert decoded == [], "the bomb's pixels must never be decoded"


def test_pil_guard_at_default_also_gives_our_message(write):
    with pytest.raises(ImageInputError, match="too large|megapixels"):
        load_image(write("bomb.png", png_header_only(20000, 20000)))


def test_file_over_byte_limit_refused_before_reading(write, monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_BYTES", 1000)
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    assert len(data) > 1000
    with pytest.raises(ImageInputError, match="limit is"):
        load_image(write("big.png", data))
    with pytest.raises(ImageInputError, match="limit is"):
        load_image(data)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageInputError):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageInputError):
        load_image(tmp_path)


def test_none_and_unknown_types():
    with pytest.raises(ImageInputError, match="No image"):
        load_image(None)
    with pytest.raises(ImageInputError, match="Cannot read an image from a dict"):
        load_image({"path": "x.png"})


def test_check_file_reads_header_only(write):
    # A 4000x3000 header with no real pixel data: valid size, never decoded.
    fmt, size = preprocess.check_file(write("header.png", png_header_only(4000, 3000)))
    assert (fmt, size) == ("PNG", (4000, 3000))
    with pytest.raises(ImageInputError, match="megapixels"):
        preprocess.check_file(write("bomb.png", png_header_only(20000, 20000)))


def test_errors_are_value_errors():
    assert issubclass(ImageInputError, ValueError)


# ----- accepted, converted to what a person would see -------------------------------------------


def test_plain_rgb_png_round_trips(write):
    pixels = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    img = load_image(write("ok.png", encode(Image.fromarray(pixels), "PNG")))
    assert img.mode == "RGB" and img.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(img), pixels)


def test_16_bit_png_is_scaled_not_clipped(write):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    img, notes = load_image_with_notes(write("deep.png", encode(Image.fromarray(ramp), "PNG")))
    a = np.asarray(img)
    assert img.mode == "RGB"
    assert a[..., 0].max() >= 250 and a[..., 0].min() <= 1
    mid = a[32, 0, 0]  # 16-bit value 32768 -> about 128, not 255
    assert 120 <= mid <= 135
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert any("8 bits" in n for n in notes)


def test_cmyk_jpeg_becomes_rgb(write):
    cyan = Image.new("CMYK", (24, 24), (255, 0, 0, 0))
    img, notes = load_image_with_notes(write("print.jpg", encode(cyan, "JPEG", quality=95)))
    r, g, b = np.asarray(img)[12, 12].astype(int)
    assert img.mode == "RGB" and r < 40 and g > 215 and b > 215
    assert any("CMYK" in n for n in notes)


def test_palette_gif_keeps_its_colours(write):
    im = rgb((20, 20), (250, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    img = load_image(write("pal.gif", encode(im, "GIF")))
    r, g, b = np.asarray(img)[10, 10].astype(int)
    assert img.mode == "RGB" and r > 230 and g < 30 and b < 30


def test_animated_gif_uses_first_frame(write):
    frames = [rgb((20, 20), (255, 0, 0)), rgb((20, 20), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img, notes = load_image_with_notes(write("anim.gif", data))
    r, g, b = np.asarray(img)[5, 5].astype(int)
    assert r > 200 and b < 50
    assert any("2 frames" in n for n in notes)


def test_rgba_transparent_areas_become_white(write):
    a = np.zeros((16, 16, 4), dtype=np.uint8)  # fully transparent black...
    a[:, :8] = (0, 0, 255, 255)  # ...except an opaque blue left half
    img, notes = load_image_with_notes(write("alpha.png", encode(Image.fromarray(a, "RGBA"), "PNG")))
    px = np.asarray(img)
    assert tuple(px[4, 12]) == (255, 255, 255)
    assert tuple(px[4, 2]) == (0, 0, 255)
    assert any("transparent" in n for n in notes)


def test_grayscale_becomes_three_equal_channels(write):
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    img = load_image(write("grey.jpg", encode(Image.fromarray(ramp, "L"), "PNG")))
    a = np.asarray(img)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(a[..., 0], ramp)
    np.testing.assert_array_equal(a[..., 0], a[..., 2])


def test_exif_rotation_is_applied(write):
    im = rgb((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img, notes = load_image_with_notes(write("phone.jpg", encode(im, "JPEG", exif=exif.tobytes())))
    assert img.size == (20, 40)
    assert any("EXIF" in n for n in notes)


def test_bytes_pil_and_array_sources_agree(write):
    pixels = np.random.default_rng(3).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    for source in (data, Image.fromarray(pixels), pixels, write("a.png", data), str(write("b.png", data))):
        np.testing.assert_array_equal(np.asarray(load_image(source)), pixels)


def test_array_variants():
    grey = np.full((16, 16), 100, dtype=np.uint8)
    assert np.asarray(load_image(grey))[0, 0].tolist() == [100, 100, 100]
    unit = np.full((16, 16, 3), 0.5, dtype=np.float32)
    assert np.asarray(load_image(unit))[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ImageInputError, match="HxW"):
        load_image(np.zeros((16, 16, 5), dtype=np.uint8))
    with pytest.raises(ImageInputError, match="NaN"):
        load_image(np.full((16, 16), np.nan))


# ----- the model's input ----------------------------------------------------------------------


def test_model_input_of_a_32x32_image_is_exact():
    pixels = np.random.default_rng(4).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mi = to_model_input(Image.fromarray(pixels))
    assert mi.tensor.shape == (1, 3, 32, 32) and mi.tensor.dtype == torch.float32
    np.testing.assert_array_equal(mi.seen, pixels)
    back = mi.tensor[0] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    np.testing.assert_allclose(back.permute(1, 2, 0).numpy() * 255, pixels, atol=1e-3)


def test_wide_image_is_centre_cropped_not_squashed():
    a = np.zeros((100, 300, 3), dtype=np.uint8)
    a[:, :100] = (255, 0, 0)  # left third red
    a[:, 100:200] = (0, 0, 255)  # centre blue
    a[:, 200:] = (0, 255, 0)  # right third green
    seen = to_model_input(Image.fromarray(a)).seen
    assert seen.shape == (32, 32, 3)
    assert (seen[..., 2] > 200).all() and (seen[..., 0] < 30).all() and (seen[..., 1] < 30).all()


def test_large_photo_is_antialiased():
    # A 1-pixel checkerboard must average to grey, not alias to stripes.
    board = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.uint8)
    seen = to_model_input(Image.fromarray(board, "L").convert("RGB")).seen
    assert abs(float(seen.mean()) - 127.5) < 8 and seen.std() < 10


def test_normalisation_first_used_in_inference_mode_still_allows_gradients():
    import torch

    from resnet.preprocess import _stats, denormalise, images_to_pixels, normalise

    _stats.cache_clear()
    pixels = images_to_pixels(np.full((32, 32, 3), 128, np.uint8))
    with torch.inference_mode():
        normalise(pixels)  # the first call fills the per-device cache
    wanted = pixels.clone().requires_grad_(True)
    normalise(wanted).sum().backward()  # raised "Inference tensors cannot be saved for backward"
    assert wanted.grad is not None and torch.all(wanted.grad > 0)
    torch.testing.assert_close(denormalise(normalise(pixels)), pixels)


def test_a_data_set_file_decodes_to_32x32_rgb_or_says_why():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    np.testing.assert_array_equal(preprocess.decode_cifar(png.getvalue()), image)
    grey = io.BytesIO()
    Image.fromarray(image[..., 0]).save(grey, format="PNG")
    assert preprocess.decode_cifar(grey.getvalue()).shape == (32, 32, 3)  # any mode becomes RGB
    with pytest.raises(ValueError, match="not a readable image"):
        preprocess.decode_cifar(b"not an image")
    big = io.BytesIO()
    Image.new("RGB", (64, 48)).save(big, format="PNG")
    with pytest.raises(ValueError, match="64x48 px; CIFAR-10 images are 32x32"):
        preprocess.decode_cifar(big.getvalue())
