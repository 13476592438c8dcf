"""Every image mode PIL reads becomes an upright uint8 HxWx3 RGB array."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssodkit.data.images import image_size, load_image
from ssodkit.errors import DataError

ORIENTATION = 0x0112


def _halves(width: int = 40, height: int = 20) -> np.ndarray:
    """Left half red, right half blue: rotation is visible in where the red ends up."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return pixels


def _assert_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (height, width, 3)


def test_rgb_png_loads_unchanged(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(_halves()).save(path)
    np.testing.assert_array_equal(load_image(path), _halves())


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_is_repeated_into_three_channels(tmp_path, mode):
    path = tmp_path / "gray.png"
    gray = np.tile(np.array([0, 255], np.uint8), (6, 4))
    Image.fromarray(gray).convert(mode).save(path)
    array = load_image(path)
    _assert_rgb(array, 6, 8)
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], gray)


def test_rgba_is_composited_on_black(tmp_path):
    path = tmp_path / "rgba.png"
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[0, 255, 128], [255, 0, 255]]
    Image.fromarray(rgba, "RGBA").save(path)
    array = load_image(path)
    _assert_rgb(array, 2, 3)
    np.testing.assert_array_equal(array[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(array[0, 1], [200, 100, 50])
    np.testing.assert_array_equal(array[0, 2], [100, 50, 25])


def test_gray_with_alpha_is_composited_on_black(tmp_path):
    path = tmp_path / "la.png"
    la = np.stack(
        [np.full((2, 2), 180, np.uint8), np.array([[255, 0], [0, 255]], np.uint8)], axis=-1
    )
    Image.fromarray(la, "LA").save(path)
    array = load_image(path)
    _assert_rgb(array, 2, 2)
    np.testing.assert_array_equal(array[..., 0], [[180, 0], [0, 180]])


def test_palette_with_transparent_colour_is_composited_on_black(tmp_path):
    path = tmp_path / "p.png"
    img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    img.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    img.save(path, transparency=0)
    array = load_image(path)
    _assert_rgb(array, 1, 2)
    np.testing.assert_array_equal(array[0], [[0, 0, 0], [200, 150, 100]])


def test_16_bit_grayscale_is_divided_by_257(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    array = load_image(path)
    _assert_rgb(array, 1, 3)
    np.testing.assert_array_equal(array[0, :, 1], [0, 100, 255])


def test_32_bit_integer_and_float_images_are_scaled_by_their_maximum(tmp_path):
    ints = tmp_path / "int.tif"
    Image.fromarray(np.array([[0, 500, 1000]], np.int32), "I").save(ints)
    floats = tmp_path / "float.tif"
    Image.fromarray(np.array([[-1.0, 0.25, 0.5]], np.float32), "F").save(floats)
    np.testing.assert_array_equal(load_image(ints)[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(load_image(floats)[0, :, 0], [0, 128, 255])


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(_halves()).convert("CMYK").save(path, quality=95)
    array = load_image(path)
    _assert_rgb(array, 20, 40)
    assert array[10, 5, 0] > 200 and array[10, 5, 2] < 50
    assert array[10, 35, 2] > 200 and array[10, 35, 0] < 50


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_to_pixels_and_size(tmp_path, suffix):
    path = tmp_path / f"rotated{suffix}"
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored image must be turned 90° clockwise for display
    Image.fromarray(_halves(40, 20)).save(path, exif=exif.tobytes(), quality=95)
    array = load_image(path)
    _assert_rgb(array, 40, 20)
    assert array[5, 10, 0] > 200 and array[5, 10, 2] < 50  # red (stored left) is now on top
    assert array[35, 10, 2] > 200 and array[35, 10, 0] < 50
    assert image_size(path) == (20, 40)


def test_image_size_reads_the_header_of_an_unrotated_image(tmp_path):
    path = tmp_path / "plain.png"
    Image.fromarray(_halves(40, 20)).save(path)
    assert image_size(path) == (40, 20)


def test_missing_file_raises_data_error_with_the_path(tmp_path):
    path = tmp_path / "nope.png"
    for fn in (load_image, image_size):
        with pytest.raises(DataError, match="nope.png: image file not found"):
            fn(path)


def test_file_that_is_not_an_image_raises_data_error(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"text\.png: not an image"):
        load_image(path)


def test_truncated_image_raises_data_error_naming_it_as_corrupt(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        path
    )
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=r"cut\.png: corrupt image"):
        load_image(path)
    assert "\n" not in str(pytest.raises(DataError, load_image, path).value)
