"""Reading user images safely: every mode converted to RGB, EXIF rotation applied,
unusable files rejected with the file named and the fix given."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont, ImageOps, UnidentifiedImageError

from tools.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MIN_SIDE = 64
# Larger pictures are refused from their header, before decoding: 64 megapixels (8192 x 8192) hold an
# 8K frame or a 60-megapixel photo, take ~200 MB as RGB and far more while converting, and nothing aldar
# does uses more than 1024 px a side. PIL's own bomb check stops only at ~179 megapixels.
MAX_PIXELS = 64_000_000


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image (CMYK, RGBA, 16-bit, palette, EXIF-rotated are converted)."""
    path = Path(path).expanduser()  # "~/pictures" from aldar.toml is not expanded by any shell
    if not path.is_file():
        raise InputError(f"image {path} does not exist", "check the path")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is an empty (zero-byte) file", "replace it with a real image or remove it")
    try:
        with warnings.catch_warnings():  # PIL warns from 89 megapixels; MAX_PIXELS, lower, refuses in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            width, height = opened.size  # read from the header: nothing is decoded yet
            if width * height > MAX_PIXELS:
                raise InputError(f"image {path} is {width}x{height} ({width * height / 1e6:.0f} megapixels), over "
                                 f"the {MAX_PIXELS // 1_000_000}-megapixel limit",
                                 "downscale it (1024-2048 px per side is plenty) and try again")
            opened.load()  # forces a full decode: truncated files fail here, not later
            image = ImageOps.exif_transpose(opened)
            image = _to_rgb(image)
    except PermissionError:
        raise InputError(f"image {path} cannot be read (permission denied)",
                         "make it readable (chmod u+r) or copy it somewhere you own") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {path} is too large to open safely ({exc})",
                         "downscale it (1024-2048 px per side is plenty) and try again") from None
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image file PIL can read",
                         "remove it or convert it to PNG/JPEG/WebP") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image {path} is damaged or truncated ({exc})", "re-export or re-download it") from None
    if min(image.size) < MIN_SIDE:
        raise InputError(f"image {path} is {image.width}x{image.height}, under the {MIN_SIDE} px minimum",
                         f"use images at least {MIN_SIDE} px on each side (512+ recommended)")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        array = np.asarray(image, dtype=np.float64)
        # I;16 files are 16-bit by definition (a dark one must stay dark); plain "I" may hold either range.
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent areas become white, as a children's-book page would be, not black.
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def list_images(folder: str | Path, what: str = "references") -> list[Path]:
    """Image files in ``folder`` (sorted), or a clear error when there are none."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} is a file, not a folder",
                         f"pass --{what} DIR, the folder that holds your png/jpg/webp images")
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist", f"pass --{what} DIR with your png/jpg/webp images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{what} folder {folder} holds no png/jpg/webp images",
                         f"put images of the character there or pass another --{what} DIR")
    return files


def skipped_note(folder: str | Path, what: str = "references", shown: int = 5) -> str:
    """One line naming the files of ``folder`` that ``list_images`` leaves out (notes, PDFs, .gif/.tiff
    pictures), or '' when there are none: a picture in another format must not vanish in silence. The files
    a references folder holds by design are not named: hidden files, the taxonomy.json and character.json it
    may carry, a README, and everything beside the bundled examples' pictures (their drawing scripts)."""
    from tools.paths import BUNDLED_REFERENCES

    folder = Path(folder).expanduser()
    if not folder.is_dir() or folder.resolve().parent == BUNDLED_REFERENCES.parent.resolve():
        return ""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES
                   and not p.name.startswith(".") and p.name not in ("taxonomy.json", "character.json")
                   and not p.name.upper().startswith("README"))
    if not names:
        return ""
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return (f"{what} folder {folder}: skipped {len(names)} file(s) that are not png/jpg/webp images: {listed}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def label_font(size: int):
    """PIL's default font at ``size`` px for chart labels; the small bitmap font where Pillow is older than
    10.1 (no size argument) or built without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()
