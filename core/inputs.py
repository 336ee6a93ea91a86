"""What comes from outside: image files, uploads and embedded images; small JSON files.

Images are read in two stages. The header alone is read first (no pixel is decoded) and its
size checked against ``MAX_INPUT_PIXELS``; only then are the pixels decoded, which also
proves the data is a real image. Every mode is then converted the same way: RGBA when the
image carries any transparency (an alpha channel, palette or tRNS transparency), RGB
otherwise (``grey=True`` keeps opaque greyscale as 'L', for masks); 16/32-bit greyscale is
scaled to 8 bits, CMYK and the other colour spaces go to RGB, EXIF orientation is applied.
PIL's own decompression-bomb warning is silenced here: this check is stricter.

Every failure is a :class:`StudioError` with one line that says what to change.
"""
from __future__ import annotations

import io
import json
import math
import os
import struct
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
from PIL import Image, ImageOps

from .errors import StudioError

# input images (scribbles, maps, init images, uploads): 4x the default output limit, since
# inputs are resized to the output; STUDIO_MAX_IMAGE_PIXELS overrides
MAX_INPUT_PIXELS = int(os.environ.get("STUDIO_MAX_IMAGE_PIXELS", 4 * 4096 * 2048))
MAX_JSON_BYTES = 1_000_000  # prompts and words files are small: a bigger one is a mistake
FORMATS = "a PNG, JPEG or WebP image"
# the decoders tried: common formats only (no EPS, which runs Ghostscript, nor other rarities)
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG also opens MPO (phones)
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_HIGH_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ImageSource = str | os.PathLike | bytes | IO[bytes]


# --- modes -------------------------------------------------------------------------------------


def has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` carries transparency in any form (alpha channel, palette, tRNS)."""
    return image.mode in ALPHA_MODES or "transparency" in image.info


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """16-bit ('I;16*', or 'I' above 255) greyscale scaled to 'L'; 'F' clipped to 0..255."""
    array = np.asarray(image)
    if image.mode != "F" and (image.mode.startswith("I;16") or array.max(initial=0) > 255):
        array = array.astype(np.float64) / 257.0
    array = np.clip(np.nan_to_num(np.asarray(array, dtype=np.float64)), 0, 255)
    return Image.fromarray(np.round(array).astype(np.uint8), mode="L")


def normalise_mode(image: Image.Image, grey: bool = False) -> Image.Image:
    """RGBA if ``image`` has any transparency, else RGB ('L' for opaque greyscale with ``grey``)."""
    if image.mode in _HIGH_BIT_GREY:
        image = _eight_bit_grey(image)
    if has_alpha(image):
        return image if image.mode == "RGBA" else image.convert("RGBA")
    if grey and image.mode in ("1", "L"):
        return image if image.mode == "L" else image.convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def alpha_channel(image: Image.Image) -> np.ndarray:
    """(H, W) alpha in [0, 1] of an image of any mode; ones where it has no transparency."""
    if not has_alpha(image):
        return np.ones((image.height, image.width), dtype=np.float32)
    return np.asarray(normalise_mode(image).getchannel("A"), dtype=np.float32) / 255.0


# --- sizes -------------------------------------------------------------------------------------


def check_image_size(size: tuple[int, int], what: str, limit: int | None = None) -> None:
    """StudioError if a (width, height) is over ``limit`` pixels (default: MAX_INPUT_PIXELS)."""
    limit = MAX_INPUT_PIXELS if limit is None else limit
    width, height = size
    if width < 1 or height < 1:
        raise StudioError(f"{what} is {width}x{height}: it has no pixels.")
    if width * height > limit:
        scale = math.sqrt(limit / (width * height))
        fit = f"{max(1, int(width * scale))}x{max(1, int(height * scale))}"
        raise StudioError(f"{what} is {width}x{height} ({width * height:,} pixels), over the limit of {limit:,} "
                          f"pixels: shrink it to {fit} or smaller (or raise STUDIO_MAX_IMAGE_PIXELS).")


def _png_header_size(prefix: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, read from its first 24 bytes (no decoding)."""
    if len(prefix) >= 24 and prefix.startswith(_PNG_SIGNATURE) and prefix[12:16] == b"IHDR":
        return struct.unpack(">II", prefix[16:24])
    return None


# --- PNG text chunks, read without PIL -------------------------------------------------------------
# PIL refuses a PNG whose text chunk decompresses to over 1 MB (PngImagePlugin.MAX_TEXT_CHUNK), and
# a studio recipe with a large embedded image is bigger: recipes are read here, with our own bound.

TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _inflate(data: bytes, limit: int, label: str) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit)
    if inflater.unconsumed_tail:
        raise StudioError(f"{label} is over {limit:,} bytes: it is not one this studio wrote.")
    return out


def _chunk_text(kind: bytes, data: bytes, key: str, limit: int, label: str) -> str | None:
    """The text of one tEXt/zTXt/iTXt chunk if its keyword is ``key``, else None."""
    keyword, _, rest = data.partition(b"\0")
    if keyword != key.encode("latin-1"):
        return None
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return _inflate(rest[1:], limit, label).decode("latin-1")
    compressed, rest = rest[:1] == b"\1", rest[2:]
    _, _, rest = rest.partition(b"\0")  # language tag
    _, _, text = rest.partition(b"\0")  # translated keyword
    return (_inflate(text, limit, label) if compressed else text).decode("utf-8")


def png_text(path: str | os.PathLike, key: str, limit: int, what: str = "Image") -> str | None:
    """The text stored under ``key`` in a PNG file (tEXt, zTXt or iTXt), decompressed to at
    most ``limit`` bytes; the header's size is checked first. Pixels are never decoded."""
    label = _label(path, what)
    with _stream(path, label) as fp:
        prefix = fp.read(24)
        size = _png_header_size(prefix)
        if size is None:
            raise StudioError(f"{label} is not a PNG: only PNGs saved by this studio carry a recipe.")
        check_image_size(size, label)
        fp.seek(len(_PNG_SIGNATURE))
        try:
            while len(head := fp.read(8)) == 8:
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IEND":
                    break
                if kind not in TEXT_CHUNKS:
                    fp.seek(length + 4, io.SEEK_CUR)
                    continue
                if length > limit:
                    raise StudioError(f"{label}: a text chunk of {length:,} bytes is over {limit:,} bytes.")
                text = _chunk_text(kind, fp.read(length), key, limit, f"The {key} in {label}")
                if text is not None:
                    return text
                fp.seek(4, io.SEEK_CUR)
        except (zlib.error, UnicodeDecodeError) as exc:
            raise StudioError(f"The {key} in {label} is damaged: it cannot be read.") from exc
    return None


def _without_text_chunks(data: bytes) -> bytes:
    """PNG bytes with their text chunks left out (for PIL, which refuses very large ones)."""
    out, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if kind not in TEXT_CHUNKS:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


# --- opening -----------------------------------------------------------------------------------


def _label(source: Any, what: str) -> str:
    return f"{what} {source}" if isinstance(source, (str, os.PathLike)) else what


def _stream(source: ImageSource, label: str) -> IO[bytes]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.open("rb")
        except FileNotFoundError as exc:
            raise StudioError(f"{label} not found: check the path.") from exc
        except IsADirectoryError as exc:
            raise StudioError(f"{label} is a folder, not an image file: give the path of {FORMATS}.") from exc
        except OSError as exc:
            raise StudioError(f"Cannot read {label} ({exc.strerror or exc}): check the file's permissions.") from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if hasattr(source, "read") and hasattr(source, "seek"):
        return source
    raise StudioError(f"{label} must be an image file path, bytes or an open file, got {type(source).__name__}.")


@contextmanager
def opened_image(source: ImageSource, what: str = "Image", limit: int | None = None,
                 formats: tuple[str, ...] = INPUT_FORMATS) -> Iterator[Image.Image]:
    """The lazily opened image (header read, size checked, no pixel decoded yet)."""
    label = _label(source, what)
    fp = _stream(source, label)
    own = fp is not source
    try:
        fp.seek(0)
        prefix = fp.read(24)
        fp.seek(0)
        header = _png_header_size(prefix)
        if header is not None:  # refuse before PIL parses the rest of the header
            check_image_size(header, label, limit)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                try:
                    image = Image.open(fp, formats=list(formats))
                except ValueError as exc:  # a text chunk over PIL's 1 MB (a studio PNG with a large recipe)
                    if header is None or "MAX_TEXT_CHUNK" not in str(exc):
                        raise
                    fp.seek(0)
                    image = Image.open(io.BytesIO(_without_text_chunks(fp.read())), formats=["PNG"])
        except Image.DecompressionBombError as exc:
            big = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            raise StudioError(f"{label} has more than {big:,} pixels by its header, above the limit of "
                              f"{MAX_INPUT_PIXELS if limit is None else limit:,} pixels: shrink it "
                              "(or raise STUDIO_MAX_IMAGE_PIXELS).") from exc
        except Exception as exc:  # noqa: BLE001  (PIL's format parsers raise assorted types on bad data)
            name = f"image {source}" if isinstance(source, (str, os.PathLike)) else what[:1].lower() + what[1:]
            raise StudioError(f"Cannot read {name}: it is not {FORMATS} the app can open.") from exc
        with image:
            check_image_size(image.size, label, limit)
            yield image
    finally:
        if own:
            fp.close()


def open_image(source: ImageSource, what: str = "Image", *, grey: bool = False, limit: int | None = None,
               formats: tuple[str, ...] = INPUT_FORMATS) -> Image.Image:
    """Open an image from a path, bytes or a file object: size checked from the header, then
    decoded, oriented and converted (RGB, or RGBA with transparency; see the module doc)."""
    with opened_image(source, what, limit, formats) as image:
        label = _label(source, what)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
                oriented = ImageOps.exif_transpose(image) or image
                return normalise_mode(oriented, grey).copy()
        except StudioError:
            raise
        except Exception as exc:  # noqa: BLE001  (truncated or damaged data: OSError, SyntaxError, zlib, ...)
            raise StudioError(f"{label} is damaged or truncated and cannot be decoded: export it again as "
                              f"{FORMATS}.") from exc


# --- JSON files ---------------------------------------------------------------------------------


def read_json_file(path: str | os.PathLike, what: str, example: str) -> Any:
    """The parsed JSON of a small file, or StudioError saying what is wrong with it.

    ``what`` names the file in messages ("Prompts file"); ``example`` shows the expected form.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise StudioError(f"{what} must be a file path, got {type(path).__name__}.")
    label = f"{what} {path}"
    file = Path(path)
    try:
        if file.is_dir():
            raise StudioError(f"{label} is a folder, not a file: give the path of a JSON file like {example}.")
        if file.stat().st_size > MAX_JSON_BYTES:
            raise StudioError(f"{label} is over {MAX_JSON_BYTES:,} bytes: it should be a small JSON object like "
                              f"{example}.")
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise StudioError(f"{label} not found: check the path.") from exc
    except UnicodeDecodeError as exc:
        raise StudioError(f"{label} is not UTF-8 text: write it as JSON like {example}.") from exc
    except OSError as exc:
        raise StudioError(f"Cannot read {label[:1].lower() + label[1:]} ({exc.strerror or exc}): "
                          "check the path and its permissions.") from exc
    return parse_json(text, label, f"write it like {example}")


def parse_json(text: str, label: str, fix: str) -> Any:
    """``json.loads`` with one-line errors (also for absurd nesting); ``fix`` says what to do."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an int of over 4300 digits
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise StudioError(f"{label} is not valid JSON{where}: {fix}.") from exc
