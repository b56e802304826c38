"""The result of generation: ordered text and image blocks, with what made them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class TextBlock:
    text: str
    type: str = "text"

    def to_dict(self) -> dict:
        return {"type": "text", "text": self.text}


@dataclass
class ImageBlock:
    """One picture the model placed. `image` is held in memory until storage writes it to `path`."""

    index: int
    width: int
    height: int
    seed: int  # the seed that drove this image's initial noise (diffusers-compatible)
    image: Image.Image | None = None
    path: str | None = None  # relative to the document folder, e.g. images/00.png
    sha256: str | None = None
    type: str = "image"

    def to_dict(self) -> dict:
        return {"type": "image", "index": self.index, "width": self.width, "height": self.height,
                "seed": self.seed, "path": self.path, "sha256": self.sha256}


Block = TextBlock | ImageBlock


@dataclass
class InputImage:
    """A picture the prompt gave the model to read. Recorded (and copied beside the document) so the page shows
    it and a picture made from it reproduces its run; `data`, the file's bytes as given, is held until storage
    copies them to `path`."""

    index: int
    name: str  # the file's own name, without its folder (pages get published; local paths stay home)
    size: int  # bytes
    width: int
    height: int
    sha256: str  # of the bytes, which the copy keeps as they were
    path: str | None = None  # relative to the document folder, e.g. inputs/00.png
    data: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "size": self.size, "width": self.width,
                "height": self.height, "sha256": self.sha256, "path": self.path}

    @classmethod
    def from_dict(cls, data: dict) -> "InputImage":
        return cls(index=data["index"], name=data["name"], size=data["size"], width=data["width"],
                   height=data["height"], sha256=data["sha256"], path=data.get("path"))


@dataclass
class Document:
    id: str
    prompt: str
    model: str
    params: dict
    blocks: list = field(default_factory=list)
    title: str | None = None
    stop_reason: str = ""  # eos | max_new_tokens | context_full
    timings: dict = field(default_factory=dict)
    input_images: list[InputImage] = field(default_factory=list)  # in the order the prompt places them
    created: str | None = None
    job_id: str | None = None
    custom_id: str | None = None  # the id as the user wrote it in the prompt file, if they did
    model_hash: str | None = None  # the checkpoint's short weights hash (A1111's "Model hash"), set when it loaded
    request_url: str | None = None  # the OpenAI Batch API endpoint of the line it answers (results.jsonl's shape)

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.blocks if isinstance(b, TextBlock))

    @property
    def images(self) -> list[ImageBlock]:
        return [b for b in self.blocks if isinstance(b, ImageBlock)]

    def to_dict(self) -> dict:
        return {
            "id": self.id, "custom_id": self.custom_id, "job_id": self.job_id, "title": self.title,
            "prompt": self.prompt,
            "model": self.model, "model_hash": self.model_hash, "params": self.params,
            "input_images": [i.to_dict() for i in self.input_images],
            "blocks": [b.to_dict() for b in self.blocks], "stop_reason": self.stop_reason,
            "timings": self.timings, "created": self.created,
            **({"request_url": self.request_url} if self.request_url else {}),  # only a Batch API line's
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Document":
        blocks = []
        for b in data.get("blocks", []):
            if b["type"] == "text":
                blocks.append(TextBlock(b["text"]))
            elif b["type"] == "image":
                blocks.append(ImageBlock(index=b["index"], width=b["width"], height=b["height"],
                                         seed=b.get("seed", 0), path=b.get("path"), sha256=b.get("sha256")))
            else:
                raise ValueError(f"unknown block type {b['type']!r}")
        return cls(id=data["id"], prompt=data["prompt"], model=data["model"], params=data.get("params", {}),
                   blocks=blocks, title=data.get("title"), stop_reason=data.get("stop_reason", ""),
                   timings=data.get("timings", {}),
                   input_images=[InputImage.from_dict(i) for i in data.get("input_images") or []],
                   created=data.get("created"), job_id=data.get("job_id"), custom_id=data.get("custom_id"),
                   model_hash=data.get("model_hash"), request_url=data.get("request_url"))
