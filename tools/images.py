"""Reading user images safely: every mode converted to RGB, EXIF rotation applied,
unusable files rejected with the file named and the fix given."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont, ImageOps, UnidentifiedImageError

from tools.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MIN_SIDE = 64


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image (CMYK, RGBA, 16-bit, palette, EXIF-rotated are converted)."""
    path = Path(path).expanduser()  # "~/pictures" from aldar.toml is not expanded by any shell
    if not path.is_file():
        raise InputError(f"image {path} does not exist", "check the path")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is an empty (zero-byte) file", "replace it with a real image or remove it")
    try:
        with Image.open(path) as opened:
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
