"""Input pictures: read once (a local file or an s3:// object), decoded for the model, and recorded with the bytes
as given, so the document can copy them beside itself and name them (document.json, the PNG chunks, its pages).

Decoding is bounded (dreamgen.pictures, issue 33): a picture over the pixel limit is refused and one larger than
the model needs is reduced as it decodes; the record keeps the file's own size. Every problem reading or decoding
a picture is an InputImageError naming it, so its document alone fails with a message that says which.
"""
from __future__ import annotations

import hashlib

from PIL import Image

from .. import pictures, settings
from ..document import InputImage
from ..errors import InputImageError, KeyNotFound, StorageError
from .storage import S3Storage

INPUTS_DIR = "inputs"
PICTURE_RETRY_S = 30.0  # how long a transient S3 error reading an input picture is retried
# The copy keeps the file's bytes (its sha256 is the record's); the suffix says their format to a browser.
_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def read_input_image(location: str, index: int = 0, endpoint_url: str | None = None) -> tuple[InputImage, Image.Image]:
    """The record of the picture at `location` (its path to be `inputs/NN.<suffix>`) and its RGB pixels (at most
    pictures.DECODE_SIDE a side). Raises InputImageError naming the picture."""
    data = _read_bytes(location, endpoint_url)
    pixels = pictures.decode(data, location)  # decodes the whole file: a truncated one fails here, not in the model
    (width, height), kind = pictures.header(data, location)  # the file's own size, before decoding reduced it
    name = location.rstrip("/").rsplit("/", 1)[-1]
    suffix = _SUFFIXES.get(kind or "", ".img")
    record = InputImage(index=index, name=name, size=len(data), width=width, height=height,
                        sha256=hashlib.sha256(data).hexdigest(), path=f"{INPUTS_DIR}/{index:02d}{suffix}", data=data)
    return record, pixels


def _read_bytes(location: str, endpoint_url: str | None) -> bytes:
    if location.startswith("s3://"):
        bucket, _, key = location[len("s3://"):].partition("/")
        try:  # retried for less than the job's own files: a picture that does not come fails its document alone
            store = S3Storage(bucket, endpoint_url=settings.s3_endpoint_url(endpoint_url),
                              retry_s=min(settings.s3_retry_s(), PICTURE_RETRY_S))
            return store.read_bytes(key)
        except KeyNotFound:
            raise InputImageError(location, "not found") from None
        except StorageError as e:
            raise InputImageError(location, f"cannot be read: {e}") from None
    try:
        with open(location, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputImageError(location, "not found") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise InputImageError(location, f"cannot be read: {e.strerror or e}") from None
