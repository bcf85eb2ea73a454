"""Images that used to load wrongly or fail without naming themselves."""

import io

import numpy as np
import PIL.Image
import pytest
from _processor_fixtures import make_processor
from PIL import Image

from processors.image_processing_tinylmm import load_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _gradient_16_bit() -> np.ndarray:
    return np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = _gradient_16_bit()
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = np.asarray(load_image(tmp_path / "deep.png"))
    assert loaded.shape == (64, 64, 3)
    assert (loaded == 255).mean() < 0.01  # clipping made 99.6 % of this gradient white
    np.testing.assert_allclose(loaded[..., 0], values / 257, atol=0.5)


def test_32_bit_integer_image_of_16_bit_values_is_scaled():
    values = _gradient_16_bit().astype(np.int32)
    loaded = np.asarray(load_image(Image.fromarray(values)))
    np.testing.assert_allclose(loaded[..., 1], values / 257, atol=0.5)


def test_32_bit_integer_image_of_8_bit_values_is_kept():
    values = np.arange(256, dtype=np.int32).reshape(16, 16)
    assert np.array_equal(np.asarray(load_image(Image.fromarray(values)))[..., 2], values)


def test_32_bit_integer_image_past_16_bits_is_refused():
    values = np.full((4, 4), 70000, dtype=np.int32)
    with pytest.raises(
        ValueError, match="32-bit integer pixels from 70000 to 70000; give an 8- or 16-bit image"
    ):
        load_image(Image.fromarray(values))


def _sideways_jpeg() -> bytes:
    """20 wide, 10 high, red left half and blue right half, marked: turn 90° clockwise to view (orientation 6)."""
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :10], pixels[:, 10:] = RED, BLUE
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def _assert_upright(image: Image.Image):
    # Turned clockwise: the left (red) half is now on top.
    assert image.size == (10, 20)
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[2, 5] - RED).max() < 20 and np.abs(pixels[17, 5] - BLUE).max() < 20


def test_exif_orientation_is_applied(tmp_path):
    (tmp_path / "phone.jpg").write_bytes(_sideways_jpeg())
    _assert_upright(load_image(tmp_path / "phone.jpg"))
    _assert_upright(load_image(_sideways_jpeg()))
    _assert_upright(load_image({"bytes": _sideways_jpeg(), "path": "phone.jpg"}))
    _assert_upright(load_image(Image.open(io.BytesIO(_sideways_jpeg()))))


def test_exif_orientation_reaches_the_crops():
    processor = make_processor(image_aspect_ratio="resize")
    crop = processor.image_processor.image_crops(_sideways_jpeg())[0][0]  # (3, S, S), normalised
    top, bottom = crop[:, 2, :].mean(-1), crop[:, -3, :].mean(-1)
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red above blue


def test_directory_is_not_called_missing(tmp_path):
    with pytest.raises(ValueError, match=f"image path '{tmp_path}' is a directory, not an image file"):
        load_image(tmp_path)


def test_directory_in_a_sample_names_the_sample(tmp_path):
    processor = make_processor()
    with pytest.raises(ValueError, match="sample 0, image 1: image path .* is a directory"):
        processor(text=["<image> what is this ?"], images=[str(tmp_path)])


def test_huge_image_names_path_size_and_the_limit(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "huge.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses past twice the limit
    with pytest.raises(
        ValueError, match=r"huge\.png' is too large .*\(10000 pixels\).*PIL\.Image\.MAX_IMAGE_PIXELS = None"
    ):
        load_image(tmp_path / "huge.png")
    data = (tmp_path / "huge.png").read_bytes()
    with pytest.raises(ValueError, match="image 'shard/huge.png' is too large"):
        load_image({"bytes": data, "path": "shard/huge.png"})


def test_truncated_file_is_refused_even_where_pil_was_told_to_pad_it(tmp_path, monkeypatch):
    """lmms-eval sets PIL's LOAD_TRUNCATED_IMAGES on import; a cut-off file must still be an error."""
    path = tmp_path / "cut.png"
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    monkeypatch.setattr(PIL.ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ValueError, match="cut.png.*could not be decoded"):
        load_image(path)
    assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES  # the caller's setting is given back


def test_a_file_that_fails_to_decode_is_closed(tmp_path, monkeypatch):
    path = tmp_path / "cut.png"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    closed = []
    original = PIL.Image.Image.close
    monkeypatch.setattr(PIL.Image.Image, "close", lambda self: closed.append(self) or original(self))
    with pytest.raises(ValueError, match="could not be decoded"):
        load_image(path)
    assert closed
    closed.clear()
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    assert load_image(tmp_path / "good.png").size == (8, 8) and not closed  # the image returned stays open
