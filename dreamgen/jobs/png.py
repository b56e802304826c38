"""PNG files that carry their generation parameters, as A1111 and ComfyUI write them, so one image
reproduces its run: key "parameters" (A1111's human line) and key "dreamgen" (JSON)."""
from __future__ import annotations

import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..document import Document, ImageBlock

PARAMETERS_KEY = "parameters"
DREAMGEN_KEY = "dreamgen"


def image_metadata(doc: Document, block: ImageBlock) -> dict:
    """What reproduces this one image: the document's inputs plus the image's own seed and place."""
    return {"prompt": doc.prompt, "params": doc.params, "model": doc.model, "seed": block.seed,
            "document": doc.id, "image_index": block.index, "job": doc.job_id,
            "input_images": [i.to_dict() for i in doc.input_images]}


def unless_one(value):
    """A painting parameter whose 1 is the reference's way (the whole UNet, guided, every step): written otherwise."""
    return None if value in (None, 1) else value


def parameters_line(doc: Document, block: ImageBlock) -> str:
    """A1111's layout: prompt, then 'Negative prompt:', then 'Key: value, ...'."""
    params = doc.params
    lines = [doc.prompt]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = [("Steps", params.get("steps")), ("Sampler", str(params.get("scheduler", "")).upper()),
              ("CFG scale", params.get("guidance")),
              ("Guidance until", unless_one(params.get("guidance_until"))),
              ("Cache interval", unless_one(params.get("cache_interval"))),
              ("Cache until", unless_one(params.get("cache_until")) if unless_one(params.get("cache_interval"))
               else None),  # where the cache ends says nothing without one
              ("Seed", block.seed), ("Size", f"{block.width}x{block.height}"),
              ("Model hash", doc.model_hash), ("Model", doc.model), ("Document", doc.id),
              ("Image", block.index),
              ("Image only", "yes" if params.get("image_only") else None)]  # text-to-image: `generate --image-only`
    lines.append(", ".join(f"{name}: {value}" for name, value in fields if value not in (None, "")))
    return "\n".join(lines)


def encode_png(doc: Document, block: ImageBlock) -> bytes:
    """The PNG bytes of `block.image` with its parameters embedded."""
    if block.image is None:
        raise ValueError(f"document {doc.id}: image {block.index} has no pixels to store")
    info = PngInfo()
    # Pillow writes iTXt instead of tEXt when the text is not Latin-1 (as A1111 does for such prompts).
    info.add_text(PARAMETERS_KEY, parameters_line(doc, block))
    info.add_text(DREAMGEN_KEY, json.dumps(image_metadata(doc, block), sort_keys=True, ensure_ascii=True))
    buffer = io.BytesIO()
    block.image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(data: bytes) -> dict:
    """The "dreamgen" metadata of a stored PNG ({} if it has none)."""
    with Image.open(io.BytesIO(data)) as image:
        text = image.text.get(DREAMGEN_KEY)
    return json.loads(text) if text else {}
