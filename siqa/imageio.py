"""Reading stereo views as grey images, with one-line errors for bad files.

Two grey conversions are used on purpose, each where the original method used it:
- `grey_cv2`: OpenCV's `imread(path, 0)` (the NSS targets, docs/method.md#the-nss-targets);
- `grey_pil`: PIL's `convert('L')` (the network's patches, docs/method.md#patches).
A view is either its own file, or one half of a side-by-side file (left half = left view).
"""
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from siqa.errors import UserError


def read_bytes(path) -> bytes:
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"expected an image file, got a folder: {path}")
        if not path.is_file():
            raise UserError(f"image not found: {path}")
        data = path.read_bytes()
    except OSError as err:  # e.g. a name too long, no permission
        raise UserError(f"cannot read image {path}: {err.strerror or err}") from None
    if not data:
        raise UserError(f"image file is empty (0 bytes): {path}")
    return data


def decoded_pil(path, data: bytes) -> Image.Image:
    """Fully decode with PIL so that a truncated or non-image file is caught here."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:  # its message names the BytesIO, not the file
        raise UserError(f"cannot read image {path}: not an image file "
                        "(or a format PIL cannot read)") from None
    except Image.DecompressionBombError as err:
        raise UserError(_too_large(path, err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise UserError(f"cannot read image {path}: not an image or truncated ({err})") from None
    return image


def _too_large(path, err):
    """A file whose header claims more pixels than PIL decodes (twice Image.MAX_IMAGE_PIXELS):
    a decompression bomb, or an image far beyond any stereo database."""
    return (f"cannot read image {path}: {' '.join(str(err).split())} "
            "(PIL refuses images this large; split it, or raise PIL.Image.MAX_IMAGE_PIXELS "
            "if it is genuine)")


def header_size(path):
    """(width, height) from the image header (no decoding), or a UserError naming the file."""
    try:
        with Image.open(path) as im:
            return im.size
    except UnidentifiedImageError:
        read_bytes(path)  # "image not found" / "image file is empty" where that is the cause
        raise UserError(f"cannot read image {path}: not an image file "
                        "(or a format PIL cannot read)") from None
    except Image.DecompressionBombError as err:
        raise UserError(_too_large(path, err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        read_bytes(path)
        raise UserError(f"cannot read image {path}: {err}") from None


WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's modes of 16-bit grey files


def grey_pil(path) -> np.ndarray:
    """uint8 H x W, PIL convert('L') (ITU-R 601 luma).

    16-bit grey files are reduced to 8 bits as OpenCV does (value >> 8, so that the patches
    and the NSS targets, read with OpenCV, see the same image): PIL's convert('L') clips
    every value over 255 to white."""
    image = decoded_pil(path, read_bytes(path))
    if image.mode in WIDE_GREY:
        wide = np.asarray(image).astype(np.int64)
        if wide.min() < 0 or wide.max() > 65535:
            raise UserError(f"cannot read image {path}: a {image.mode} image with values outside "
                            "0..65535 (save it as 8 or 16-bit)")
        return (wide >> 8).astype(np.uint8)
    return np.asarray(image.convert("L"))


def grey_cv2(path) -> np.ndarray:
    """uint8 H x W, exactly OpenCV's imread(path, IMREAD_GRAYSCALE)."""
    import cv2

    data = read_bytes(path)
    decoded_pil(path, data)  # OpenCV silently returns part of a truncated file
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise UserError(f"cannot read image {path}: OpenCV cannot decode it")
    return grey


def view_rgb(path, half=None) -> np.ndarray:
    """An 8-bit RGB view (H x W x 3, PIL convert('RGB')); `half` 0 or 1: the left or right
    half of a side-by-side file."""
    rgb = np.asarray(decoded_pil(path, read_bytes(path)).convert("RGB"))
    if half is None:
        return rgb
    w = rgb.shape[1] // 2
    return rgb[:, :w] if half == 0 else rgb[:, w : 2 * w]


def split_side_by_side(image: np.ndarray):
    """(left, right) halves of a side-by-side image; the left half is the left view."""
    half = image.shape[1] // 2
    return image[:, :half], image[:, half : 2 * half]


def read_views(left, right=None, grey=grey_pil):
    """The two grey views of a pair: files `left` and `right`, or side-by-side `left`."""
    if right is None:
        return split_side_by_side(grey(left))
    lv, rv = grey(left), grey(right)
    if lv.shape != rv.shape:
        raise UserError(
            f"left/right views differ in size: {left} is {lv.shape[1]}x{lv.shape[0]}, "
            f"{right} is {rv.shape[1]}x{rv.shape[0]} (width x height)"
        )
    return lv, rv


def check_image(path):
    """(width, height) of a file that both PIL and OpenCV can read, fully decoded once;
    otherwise a short string saying what is wrong with it ("missing", "empty", ...)."""
    fp = Path(path)
    try:
        if not fp.is_file():
            return "missing"
        if fp.stat().st_size == 0:
            return "empty"
    except (OSError, ValueError) as err:  # e.g. a name too long for the file system
        return f"cannot be opened: {err.strerror if isinstance(err, OSError) else err}"
    try:
        with Image.open(fp) as im:
            size, fmt = im.size, im.format
            try:
                im.load()
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                return f"truncated or damaged: {err}"
    except Image.DecompressionBombError as err:
        return f"too large to decode: {err}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return "not an image"
    import cv2  # OpenCV loads slowly: only where a file is checked or read with it

    if not cv2.haveImageReader(str(fp)):
        return f"{fmt} format, which OpenCV cannot read; convert it to PNG or BMP"
    return size
