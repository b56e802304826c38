"""What the model reads: requests, their prompts as context embeddings, and the blocks the loop feeds.

    prompt        `<s>` + chat(template(topic)), input pictures as image blocks where `<image>` stands
    dream block   `<dream_start>` + the Q learned queries + `<dream_end>`             (Q + 2 positions)
    image block   `<im_start>` + P projected CLIP features + `<im_end>`               (P + 2 positions)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ParamsError
from ..model.dreamllm import DreamLLM
from ..model.special_tokens import IMAGE_PLACEHOLDER
from ..params import GenerationParams
from ..prompts.templates import chat_text, render
from .images import pil_to_tensor


@dataclass
class DocumentRequest:
    prompt: str
    params: GenerationParams = field(default_factory=GenerationParams)
    id: str | None = None
    title: str | None = None
    images: list = field(default_factory=list)  # input pictures (PIL) the model reads
    image_only: bool = False  # text-to-image as the reference pipeline does it: `<s>` + caption + dream block
    # Polled between steps: True drops this document (its job was cancelled or ran out of time); the others go on.
    should_stop: Callable[[], bool] | None = field(default=None, compare=False, repr=False)


class Encoder:
    def __init__(self, model: DreamLLM, encode_images: Callable[[torch.Tensor], torch.Tensor]):
        self.model, self.special = model, model.special
        self._encode_images = encode_images  # the backend's vision encoder: (N, 3, h, w) -> (N, P, H)
        tok = model.tokenizer
        s = self.special
        banned = set(tok.all_special_ids) | {s.pad, s.im_start, s.im_end, s.im_patch, s.dream_end, s.bos}
        for placeholder in ("<image>", "<dream>"):
            banned.add(tok.convert_tokens_to_ids(placeholder))
        banned -= {s.eos, s.dream_start}
        # The model never learned to emit block tokens: the loop forces them, so sampling must not.
        vocab = model.llm.config.vocab_size
        self.banned = torch.tensor(sorted(i for i in banned if i is not None and 0 <= i < vocab))
        self._banned_on: dict[str, torch.Tensor] = {}
        self._dream_block = None

    def banned_on(self, device: torch.device) -> torch.Tensor:
        """The banned token ids on `device`, copied there once."""
        key = str(device)
        if key not in self._banned_on:
            self._banned_on[key] = self.banned.to(device)
        return self._banned_on[key]

    def check(self, request: DocumentRequest, index: int = 0) -> None:
        where = f"request {index}" + (f" ({request.id})" if request.id else "")
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise ParamsError(f"{where}: prompt is empty")
        size = request.params.image_size
        factor = self.model.head.vae_scale_factor
        if size is not None and size % factor:
            raise ParamsError(f"{where}: image_size={size} is not a multiple of the VAE factor {factor}")
        placeholders = request.prompt.count(IMAGE_PLACEHOLDER)
        if placeholders and placeholders != len(request.images):
            raise ParamsError(f"{where}: the prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) "
                              f"but {len(request.images)} input image(s)")
        if request.image_only and request.images:
            raise ParamsError(f"{where}: image_only takes a caption, not input images")

    def tokens(self, text: str) -> list[int]:
        # split_special_tokens: a prompt that spells "<dream_start>" must not become the control token.
        return self.model.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

    def embed(self, ids: list[int]) -> torch.Tensor:
        return self.model.embed_tokens(torch.tensor(ids, device=self.model.device))  # (T, H)

    def dream_block(self) -> torch.Tensor:
        """`<dream_start>` + the learned queries + `<dream_end>`: (Q + 2, H). The same for every document."""
        if self._dream_block is None:
            s = self.special
            ends = self.embed([s.dream_start, s.dream_end])
            self._dream_block = torch.cat([ends[:1], self.model.query_embeddings(1)[0], ends[1:]])
        return self._dream_block

    def image_block(self, features: torch.Tensor) -> torch.Tensor:
        """`<im_start>` + image features (P, H) + `<im_end>`: (P + 2, H)."""
        ends = self.embed([self.special.im_start, self.special.im_end])
        return torch.cat([ends[:1], features.to(ends.dtype), ends[1:]])

    def instruction(self, request: DocumentRequest) -> str:
        instruction = render(request.params.template, request.prompt)
        if request.images and IMAGE_PLACEHOLDER not in instruction:
            instruction = (IMAGE_PLACEHOLDER + "\n") * len(request.images) + instruction
        return chat_text(request.params.chat, instruction)

    def prompt(self, request: DocumentRequest) -> torch.Tensor:
        """The context embeddings of one request, (T, H), image blocks in place of placeholders."""
        bos = [self.special.bos]
        if request.image_only:
            return torch.cat([self.embed(bos + self.tokens(request.prompt)), self.dream_block()])
        pieces = self.instruction(request).split(IMAGE_PLACEHOLDER)
        features = []
        if request.images:
            features = self.read_images([pil_to_tensor(im).to(self.model.device) for im in request.images])
        parts = [self.embed(bos + self.tokens(pieces[0]))]
        for feats, piece in zip(features, pieces[1:]):
            parts.append(self.image_block(feats))
            ids = self.tokens(piece)
            if ids:
                parts.append(self.embed(ids))
        return torch.cat(parts)

    def length(self, request: DocumentRequest) -> int:
        """Positions of `prompt(request)`, counted from tokens alone (no embedding, no picture read)."""
        s = self.special
        if request.image_only:
            return 1 + len(self.tokens(request.prompt)) + s.num_dream_queries + 2
        pieces = self.instruction(request).split(IMAGE_PLACEHOLDER)
        blocks = min(len(request.images), len(pieces) - 1)
        return 1 + sum(len(self.tokens(piece)) for piece in pieces[:blocks + 1]) + blocks * (s.num_image_patches + 2)

    def read_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Image-block features (P, H) of pictures (3, h, w) in [0, 1], encoded in one batch per size."""
        features: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for indices in by_size.values():
            encoded = self._encode_images(torch.stack([images[i] for i in indices]))
            for i, f in zip(indices, encoded):
                features[i] = f
        return features
