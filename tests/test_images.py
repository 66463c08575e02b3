"""tools.images: every image mode becomes 8-bit RGB; every unusable file is an InputError naming the file and a fix."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from tools.errors import InputError
from tools.images import MIN_SIDE, file_sha256, list_images, load_image, skipped_note

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return tuple(int(v) for v in image.getpixel(xy))


def close(actual, expected, tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


# --------------------------------------------------------------------------- conversions
def test_cmyk_jpeg_becomes_rgb_with_the_same_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (96, 80), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (96, 80)
    assert close(pixel(image, (40, 40)), RED, tolerance=10)


def test_rgba_transparent_areas_become_white_and_opaque_keep_colour(tmp_path):
    rgba = Image.new("RGBA", (80, 80), (0, 0, 0, 0))  # fully transparent black
    rgba.paste((0, 0, 255, 255), (0, 0, 40, 80))  # left half opaque blue
    path = tmp_path / "alpha.png"
    rgba.save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (80, 80)
    assert pixel(image, (10, 40)) == BLUE
    assert pixel(image, (70, 40)) == WHITE  # not black: transparent means the page behind


def test_16_bit_grayscale_is_scaled_to_8_bit(tmp_path):
    values = np.zeros((64, 128), dtype=np.uint16)
    values[:, 64:] = 65535
    values[:, 32:64] = 32768
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (128, 64)
    assert pixel(image, (5, 5)) == (0, 0, 0)
    assert close(pixel(image, (40, 5)), (127, 127, 127), tolerance=1)  # not clipped to white
    assert pixel(image, (100, 5)) == WHITE


def test_palette_image_keeps_its_colours(tmp_path):
    palette_image = Image.new("P", (70, 70), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.paste(1, (35, 0, 70, 70))
    path = tmp_path / "palette.png"
    palette_image.save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert pixel(image, (5, 5)) == RED and pixel(image, (60, 5)) == BLUE


def test_palette_with_transparency_becomes_white(tmp_path):
    palette_image = Image.new("P", (70, 70), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.paste(1, (35, 0, 70, 70))
    path = tmp_path / "palette_alpha.png"
    palette_image.save(path, transparency=1)
    image = load_image(path)
    assert pixel(image, (5, 5)) == RED and pixel(image, (60, 5)) == WHITE


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (120, 80), BLUE)
    stored.paste(RED, (0, 0, 60, 80))  # stored: left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (80, 120)  # portrait after rotation
    assert close(pixel(image, (40, 10)), RED, 12)  # the left half is now on top
    assert close(pixel(image, (40, 110)), BLUE, 12)


def test_plain_rgb_and_grayscale_load_unchanged(tmp_path):
    Image.new("L", (64, 64), 200).save(tmp_path / "gray.png")
    assert pixel(load_image(tmp_path / "gray.png"), (0, 0)) == (200, 200, 200)
    Image.new("RGB", (64, 65), (1, 2, 3)).save(tmp_path / "rgb.webp", lossless=True)
    image = load_image(tmp_path / "rgb.webp")
    assert image.size == (64, 65) and pixel(image, (3, 3)) == (1, 2, 3)


def test_bundled_references_load_as_512px_rgb():
    from tools.settings import BUNDLED_REFERENCES

    files = list_images(BUNDLED_REFERENCES)
    assert [p.name for p in files] == [f"aldar{i}.png" for i in range(1, 6)]
    for path in files:
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (512, 512)


# --------------------------------------------------------------------------- bad input
def assert_names_file_and_fix(error: pytest.ExceptionInfo, path, words: str) -> None:
    message = str(error.value)
    assert str(path) in message
    assert words in message
    assert error.value.fix, "every InputError carries a fix"
    assert "\n" not in message
    assert error.value.exit_code == 2


def test_missing_folder(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(InputError) as error:
        list_images(folder)
    assert_names_file_and_fix(error, folder, "does not exist")
    assert "--references" in error.value.fix


def test_empty_folder_and_folder_without_images(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(InputError) as error:
        list_images(folder)
    assert_names_file_and_fix(error, folder, "no png/jpg/webp")
    (folder / "notes.txt").write_text("not a picture")
    with pytest.raises(InputError):
        list_images(folder)  # other suffixes are not images either


def test_list_images_is_sorted_and_skips_other_files(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.webp"):
        Image.new("RGB", (64, 64)).save(tmp_path / name, format="PNG")
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp"]


def test_non_image_file(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("this is text, not a PNG\n" * 20)
    with pytest.raises(InputError) as error:
        load_image(path)
    assert_names_file_and_fix(error, path, "not an image")


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as error:
        load_image(path)
    assert_names_file_and_fix(error, path, "truncated")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(InputError) as error:
        load_image(path)
    assert_names_file_and_fix(error, path, "zero-byte")


def test_image_under_minimum_size(tmp_path):
    path = tmp_path / "thumb.png"
    Image.new("RGB", (200, MIN_SIDE - 1)).save(path)
    with pytest.raises(InputError) as error:
        load_image(path)
    assert_names_file_and_fix(error, path, f"under the {MIN_SIDE} px minimum")
    assert "200x63" in str(error.value)


def test_missing_image_file(tmp_path):
    path = tmp_path / "gone.png"
    with pytest.raises(InputError) as error:
        load_image(path)
    assert_names_file_and_fix(error, path, "does not exist")


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"aldar" * 300_000)  # over one read block
    assert file_sha256(path) == hashlib.sha256(b"aldar" * 300_000).hexdigest()


def test_dark_16_bit_image_stays_dark(tmp_path):
    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((64, 64), 200, dtype=np.uint16)).save(path)  # 200 of 65535: nearly black
    assert pixel(load_image(path), (0, 0)) == (1, 1, 1)


def test_decompression_bomb_is_an_input_error(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 300x300 is over 2x this: PIL refuses it
    with pytest.raises(InputError) as error:
        load_image(path)
    assert_names_file_and_fix(error, path, "too large")


def test_files_that_are_not_pictures_are_named_once_and_the_list_is_cut_with_a_count(tmp_path):
    from tools.settings import BUNDLED_REFERENCES

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    for name in ("notes.txt", "pose.gif", "taxonomy.json", "character.json", "README.md", ".DS_Store"):
        (tmp_path / name).write_text("x")
    # a .gif is a picture aldar does not read: it must not vanish in silence; the companions are no news
    assert skipped_note(tmp_path) == (f"references folder {tmp_path}: skipped 2 file(s) that are not png/jpg/webp "
                                      "images: notes.txt, pose.gif")
    for index in range(6):
        (tmp_path / f"scan{index}.pdf").write_text("x")
    assert skipped_note(tmp_path).endswith("skipped 8 file(s) that are not png/jpg/webp images: notes.txt, pose.gif, "
                                           "scan0.pdf, scan1.pdf, scan2.pdf and 3 more")
    assert skipped_note(BUNDLED_REFERENCES) == ""  # its drawing script is part of the example
    (tmp_path / "only").mkdir()
    assert skipped_note(tmp_path / "only") == ""


def png_header_only(path, width: int, height: int) -> None:
    """A greyscale PNG that declares ``width`` x ``height`` but holds a few bytes of data: decoding it would
    fail as truncated (and a real one would take gigabytes), so only a check of the header refuses it cleanly."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_an_image_over_the_pixel_limit_is_refused_from_its_header_before_decoding(tmp_path, recwarn):
    path = tmp_path / "scan.png"
    png_header_only(path, 13_000, 12_000)  # 156 megapixels: under PIL's own refusal (179), was decoded whole
    with pytest.raises(InputError) as error:
        load_image(path)
    assert_names_file_and_fix(error, path, "13000x12000 (156 megapixels), over the 64-megapixel limit")
    assert "downscale" in error.value.fix
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]  # one line, no warning


def test_bundled_references_are_reproducible_from_the_drawing_script(tmp_path):
    import importlib.util

    from tools.settings import BUNDLED_REFERENCES

    spec = importlib.util.spec_from_file_location("draw_aldar_kose", BUNDLED_REFERENCES / "draw_aldar_kose.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    written = script.write_pictures(tmp_path, count=6)
    assert [p.name for p in written] == [f"aldar{i}.png" for i in range(1, 7)]
    for i in range(1, 6):
        drawn = np.asarray(load_image(tmp_path / f"aldar{i}.png"), dtype=np.int16)
        bundled = np.asarray(load_image(BUNDLED_REFERENCES / f"aldar{i}.png"), dtype=np.int16)
        assert drawn.shape == (512, 512, 3) and (drawn == bundled).all(), f"aldar{i}.png"
        assert (BUNDLED_REFERENCES / f"aldar{i}.png").stat().st_size < 150_000
        # ... and its character mask (masked loss), as the drawing knows it
        assert (tmp_path / "masks" / f"aldar{i}.png").read_bytes() == \
            (BUNDLED_REFERENCES / "masks" / f"aldar{i}.png").read_bytes()
    extra = np.asarray(load_image(tmp_path / "aldar6.png"), dtype=np.int16)
    assert np.abs(extra - drawn).mean() > 10  # past the fifth, a new random placement


def test_home_relative_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (64, 64), RED).save(tmp_path / "pics" / "a.png")
    assert list_images("~/pics") == [tmp_path / "pics" / "a.png"]
    assert pixel(load_image("~/pics/a.png"), (0, 0)) == RED
