"""Input pictures: read once (a local file or an s3:// object), decoded for the model, and recorded with the bytes
as given, so the document can copy them beside itself and name them (document.json, the PNG chunks, its pages)."""
from __future__ import annotations

import hashlib
import io

from PIL import Image

from ..document import InputImage
from .storage import open_storage

INPUTS_DIR = "inputs"
# The copy keeps the file's bytes (its sha256 is the record's); the suffix says their format to a browser.
_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def read_input_image(location: str, index: int = 0, endpoint_url: str | None = None) -> tuple[InputImage, Image.Image]:
    """The record of the picture at `location` (its path to be `inputs/NN.<suffix>`) and its RGB pixels.
    Raises OSError (unreadable or not a picture) or StorageError (S3)."""
    if location.startswith("s3://"):
        bucket, _, key = location[len("s3://"):].partition("/")
        data = open_storage(f"s3://{bucket}", endpoint_url).read_bytes(key)
    else:
        with open(location, "rb") as f:
            data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        pixels = image.convert("RGB")  # decodes the whole file: a truncated one fails here, not in the model
        suffix = _SUFFIXES.get(image.format or "", ".img")
    name = location.rstrip("/").rsplit("/", 1)[-1]
    record = InputImage(index=index, name=name, size=len(data), width=pixels.width, height=pixels.height,
                        sha256=hashlib.sha256(data).hexdigest(), path=f"{INPUTS_DIR}/{index:02d}{suffix}", data=data)
    return record, pixels
