"""Interleaved documents for training: the JSONL format, its reader, and the token sequences built from it.

One document a line:

    {"prompt": "Write about ...",                       # optional: wrapped in the chat format, not a target
     "blocks": [{"type": "text", "text": "..."},
                {"type": "image", "path": "images/0001.png"},              # the model makes it: dream + image block
                {"type": "image", "path": "in.png", "generate": false},    # the model reads it: image block only
                {"type": "image", "path": "b.png", "labels": {"position": "at the left"}}]}
                                                  # what the picture shows, for the optional readout loss

Image paths are relative to the JSONL file. Other keys (e.g. "meta") are ignored.
Image paths are relative to the JSONL file. Other keys (e.g. "meta") are ignored.

A sequence is laid out as the generation loop lays it out, so what is learned is what runs:
    <s> chat(prompt) text <dream_start> Q x <im_patch> <dream_end> <im_start> P x <im_patch> <im_end> text ... </s>
Among special tokens only `<dream_start>` is a target (and `</s>`, which ends the text): the model learns where
pictures go; the loop forces the rest.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import TrainingError
from ..model.special_tokens import SpecialTokens

log = logging.getLogger(__name__)

IGNORE = -100  # cross-entropy's ignore_index


@dataclass(frozen=True)
class ImageRef:
    path: str  # absolute
    generate: bool = True
    labels: tuple[tuple[str, str], ...] = ()  # (attribute, value) pairs the picture shows, e.g. ("size", "small")


@dataclass
class InterleavedDocument:
    prompt: str | None
    blocks: list  # str (text) or ImageRef
    source: str = ""  # file:line, for messages


def read_documents(path: str | Path) -> list[InterleavedDocument]:
    """Parse one JSONL file; a bad line is an error naming the file, the line and the reason."""
    path = Path(path)
    docs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainingError(f"{where}: not valid JSON ({e.msg})") from None
            docs.append(_parse(record, path.parent, where))
    if not docs:
        raise TrainingError(f"{path}: no documents")
    return docs


def _parse(record, base: Path, where: str) -> InterleavedDocument:
    if not isinstance(record, dict) or not isinstance(record.get("blocks"), list) or not record["blocks"]:
        raise TrainingError(f"{where}: a document is an object with a non-empty 'blocks' list")
    prompt = record.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise TrainingError(f"{where}: 'prompt' must be a string")
    blocks = []
    for i, block in enumerate(record["blocks"]):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            blocks.append(block["text"])
        elif kind == "image" and isinstance(block.get("path"), str):
            image = (base / block["path"]).resolve()
            if not image.is_file():
                raise TrainingError(f"{where}: block {i}: no image at {image}")
            blocks.append(ImageRef(str(image), bool(block.get("generate", True)), _labels(block, i, where)))
        else:
            raise TrainingError(f"{where}: block {i}: expected {{'type': 'text', 'text': str}} "
                                f"or {{'type': 'image', 'path': str}}")
    return InterleavedDocument(prompt=prompt, blocks=blocks, source=where)


def _labels(block: dict, i: int, where: str) -> tuple[tuple[str, str], ...]:
    labels = block.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise TrainingError(f"{where}: block {i}: 'labels' must map attribute names to strings, "
                            f"e.g. {{\"position\": \"at the left\"}}")
    return tuple(sorted(labels.items()))


# ---------------------------------------------------------------------------------------------- sequences
@dataclass
class Sample:
    """One document as token ids with LM labels, and where its images sit."""

    input_ids: list[int]
    labels: list[int]
    dreams: list[tuple[int, ImageRef]] = field(default_factory=list)  # (first query position, image)
    images: list[tuple[int, str]] = field(default_factory=list)  # (first patch position, image path)


class SequenceBuilder:
    """Documents -> Samples with one tokenizer, block layout and chat format."""

    def __init__(self, tokenizer, special: SpecialTokens, chat_template: str = "{instruction}",
                 train_on_prompt: bool = False):
        self.tokenizer, self.special = tokenizer, special
        self.chat_template, self.train_on_prompt = chat_template, train_on_prompt

    def tokens(self, text: str) -> list[int]:
        # As generation tokenizes: text that spells a special token stays text.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

    def build(self, doc: InterleavedDocument) -> Sample:
        s = self.special
        ids = [s.bos]
        if doc.prompt is not None:
            ids += self.tokens(self.chat_template.format(instruction=doc.prompt))
        labels = list(ids) if self.train_on_prompt else [IGNORE] * len(ids)
        labels[0] = IGNORE  # nothing predicts <s>
        sample = Sample(ids, labels)
        for block in doc.blocks:
            if isinstance(block, str):
                text = self.tokens(block)
                ids += text
                labels += text
                continue
            if block.generate:
                sample.dreams.append((len(ids) + 1, block))
                ids += s.dream_block()
                labels += [s.dream_start] + [IGNORE] * (s.num_dream_queries + 1)
            sample.images.append((len(ids) + 1, block.path))
            ids += s.image_block()
            labels += [IGNORE] * s.image_block_len
        ids.append(s.eos)
        labels.append(s.eos)
        return sample


@dataclass
class Batch:
    """Right-padded samples. Right padding is safe here: one causal pass, no cache, real positions are 0..n-1."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L)
    dream_rows: torch.Tensor  # (N,) row of each generated image
    dream_starts: torch.Tensor  # (N,) position of its first query
    dream_paths: list[str]
    dream_labels: list[dict[str, str]]  # what each generated image shows (empty where the data says nothing)
    image_rows: torch.Tensor  # (M,) row of each image block
    image_starts: torch.Tensor  # (M,) position of its first patch
    image_paths: list[str]


def collate(samples: list[Sample], pad_id: int) -> Batch:
    length = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    dream, image = [], []
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
        dream += [(row, start, ref) for start, ref in s.dreams]
        image += [(row, start, path) for start, path in s.images]
    as_long = lambda items, k: torch.tensor([it[k] for it in items], dtype=torch.long)  # noqa: E731
    return Batch(ids, mask, labels, as_long(dream, 0), as_long(dream, 1), [d[2].path for d in dream],
                 [dict(d[2].labels) for d in dream],
                 as_long(image, 0), as_long(image, 1), [i[2] for i in image])


class InterleavedDataset:
    """Every document of the training files as a Sample; those longer than max_length are left out (and counted)."""

    def __init__(self, files: list[str], builder: SequenceBuilder, max_length: int):
        self.samples: list[Sample] = []
        self.skipped = 0
        for file in files:
            for doc in read_documents(file):
                sample = builder.build(doc)
                if len(sample.input_ids) > max_length:
                    self.skipped += 1
                    continue
                self.samples.append(sample)
        if not self.samples:
            raise TrainingError(f"no document of {', '.join(files)} fits in {max_length} tokens")
        if self.skipped:
            log.warning("left out %d documents longer than %d tokens", self.skipped, max_length)

    def __len__(self) -> int:
        return len(self.samples)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The sample indices of training step `step`: epochs of seeded permutations, so step k's batch is the same
    whether the run started at 0 or resumed at k."""
    start = step * batch_size
    indices = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        indices += order[offset:offset + batch_size - len(indices)].tolist()
    return indices


# ---------------------------------------------------------------------------------------------- pixels
def load_image(path: str, size: int) -> torch.Tensor:
    """An image file -> (3, size, size) in [0, 1]: shortest side to `size`, centre crop."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)


def image_paths(sources: list[str]) -> list[str]:
    """Every image of a list of JSONL files and image folders, each once, in a stable order."""
    paths: list[str] = []
    for source in sources:
        p = Path(source)
        if p.is_dir():
            paths += sorted(str(f.resolve()) for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
        else:
            for doc in read_documents(p):
                paths += [b.path for b in doc.blocks if isinstance(b, ImageRef)]
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise TrainingError(f"no images in {', '.join(sources)}")
    return unique
