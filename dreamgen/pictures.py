"""Input pictures, bounded: their size read from the header alone, and decoded no larger than the model needs.

A 48 KB PNG can hold 20000x20000 pixels, which Pillow refuses with a DecompressionBombError (not an OSError) and
which, below Pillow's own limit, becomes gigabytes of float32 before the vision encoder resizes it (issue 33).
So a prompt file's pictures are checked against MAX_INPUT_PIXELS from their header when the file is validated,
checked again when decoded (a picture may change after validation), and decoded to at most DECODE_SIDE pixels a
side (JPEG directly at a reduced scale, others reduced right after decoding, before they become tensors).
Every problem is an InputImageError naming the picture. Light on purpose: Pillow, no torch, no storage.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import BinaryIO, Callable

from PIL import Image

from .errors import InputImageError

MAX_INPUT_PIXELS = 50_000_000  # a 50-megapixel photo decodes to 150 MB of RGB; a bomb's 400 MP is refused
DECODE_SIDE = 2048  # the vision encoder reads 224-336 px; kept larger so a normal picture is read unchanged
HEADER_BYTES = (64 * 1024, 2 * 1024 * 1024)  # read from S3 in turn to find a header: PNG's is in the first
# 33 bytes, JPEG's frame comes after its EXIF and colour profile segments (64 KB each, rarely more than a few)


def size_problem(width: int, height: int) -> str | None:
    if width * height > MAX_INPUT_PIXELS:
        return f"is {width}x{height} pixels, over the limit of {MAX_INPUT_PIXELS:,} pixels; scale it down first"
    return None


def header_size(source: str | BinaryIO | bytes, name: str) -> tuple[int, int]:
    """(width, height) from the picture's header, reading no pixel; InputImageError if it is no image or too
    large."""
    return header(source, name)[0]


def header(source: str | BinaryIO | bytes, name: str) -> tuple[tuple[int, int], str | None]:
    """((width, height), format) from the picture's header, as header_size checks it; format as Pillow names it
    (PNG, JPEG ...)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with _quiet(), Image.open(source) as image:
            size, kind = image.size, image.format
    except Image.DecompressionBombError:
        raise InputImageError(name, f"holds more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                                    f"bomb to Pillow), over the limit of {MAX_INPUT_PIXELS:,}") from None
    except PermissionError as e:
        raise InputImageError(name, f"cannot be read: {e.strerror}") from None
    except Exception:  # Pillow raises many kinds (UnidentifiedImageError, SyntaxError, struct.error ...)
        raise _NoHeader(name, "is not an image file (no header Pillow can read)") from None
    problem = size_problem(*size)
    if problem:
        raise InputImageError(name, problem)
    return size, kind


def s3_header_size(read_head: Callable[[int], bytes], name: str) -> tuple[int, int]:
    """header_size of a picture on S3, reading its first bytes only (`read_head(n)`: up to n bytes)."""
    for limit in HEADER_BYTES:
        head = read_head(limit)
        try:
            return header_size(head, name)
        except _NoHeader:
            if len(head) < limit:  # the whole file was read: it is no image
                raise
    raise InputImageError(name, f"no image header in its first {HEADER_BYTES[-1] // 1024 // 1024} MB")


@contextlib.contextmanager
def _quiet():
    """Pillow warns of pictures between 89 and 179 megapixels; those are refused here, with a message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


class _NoHeader(InputImageError):
    """No header found in the bytes read: not an image, or one whose header lies further on."""


def decode(source: str | bytes, name: str) -> Image.Image:
    """The picture as RGB, at most DECODE_SIDE pixels a side; InputImageError, naming it, for anything that
    goes wrong (not an image, too large, truncated, a decoder's error)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with _quiet(), Image.open(source) as image:
            problem = size_problem(*image.size)
            if problem:
                raise InputImageError(name, problem)
            # JPEG: decode at 1/2, 1/4 or 1/8 scale, still at least DECODE_SIDE on the long side
            scale = DECODE_SIDE / max(image.size)
            if scale < 1:
                image.draft("RGB", (max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            picture = image.convert("RGB")
    except InputImageError:
        raise
    except Image.DecompressionBombError:
        raise InputImageError(name, f"holds more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, over the limit of "
                                    f"{MAX_INPUT_PIXELS:,}") from None
    except PermissionError as e:
        raise InputImageError(name, f"cannot be read: {e.strerror}") from None
    except Image.UnidentifiedImageError:
        raise InputImageError(name, "is not an image file (no format Pillow reads)") from None
    except Exception as e:  # the decoder's words, with the picture's name where Pillow shows its file object
        detail = str(e).replace(repr(source), name) if not isinstance(source, str) else str(e)
        raise InputImageError(name, f"cannot be decoded ({type(e).__name__}: {detail})") from None
    if max(picture.size) > DECODE_SIDE:
        picture.thumbnail((DECODE_SIDE, DECODE_SIDE), Image.Resampling.BICUBIC)
    return picture
