"""Interleaved document generation: DreamLLM writes, decides where pictures go, paints them, and reads them back.

Many documents run in lockstep. Each forward pass feeds every active document a segment: one sampled token, a dream
block (`<dream_start>` + Q queries + `<dream_end>`), or an image block (`<im_start>` + P image features + `<im_end>`).
Segments are left-padded to the longest; pads are masked, positions are each document's own, so a document's result
does not depend on its neighbours. Images asked for at the same step are denoised in one UNet batch.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..document import Document, ImageBlock, TextBlock
from ..errors import GenerationCancelled, ParamsError
from ..model.dreamllm import DreamLLM
from ..model.special_tokens import IMAGE_PLACEHOLDER
from ..params import GenerationParams
from ..prompts.templates import chat_text, render
from .components import Components, TorchComponents
from .diffusion import ImageRequest, denoise_group, group_key, image_seed
from .images import pil_to_tensor, tensor_to_pil
from .sampling import sample_tokens

log = logging.getLogger(__name__)

COMPACT_MIN_LEN = 64  # compact the KV cache once it is this long and at least half holes
# A document that asked for a picture waits (its neighbours go on writing) until nobody else can go on or it has
# waited this many steps: the pictures asked for meanwhile are then painted in one UNet batch. Fewer, fuller UNet
# batches cost less wherever a call has a fixed cost (a GPU, a small UNet); the wait bounds a document's delay.
PAINT_GATHER_STEPS = 24


@dataclass
class DocumentRequest:
    prompt: str
    params: GenerationParams = field(default_factory=GenerationParams)
    id: str | None = None
    title: str | None = None
    images: list = field(default_factory=list)  # input pictures (PIL) the model reads
    image_only: bool = False  # text-to-image as the reference pipeline does it: `<s>` + caption + dream block


@dataclass
class _Row:
    """One document's place in the lockstep batch."""

    index: int
    request: DocumentRequest
    text_gen: torch.Generator
    real_len: int = 0
    new_tokens: int = 0
    text_ids: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    logits: torch.Tensor | None = None
    segment: torch.Tensor | None = None  # (T, H) embeddings to feed next
    forced: torch.Tensor | None = None  # a segment the loop must feed next (the image block after a picture)
    dreaming: bool = False  # from feeding a dream block until its picture is painted
    query_states: torch.Tensor | None = None  # (Q, H) post-norm states at the queries of that dream block
    waited: int = 0  # steps spent waiting for the picture, while other documents go on
    stop_reason: str = ""

    @property
    def params(self) -> GenerationParams:
        return self.request.params

    @property
    def images_done(self) -> int:
        return sum(isinstance(b, ImageBlock) for b in self.blocks)


class Generator:
    """Writes illustrated documents with one model on one backend."""

    def __init__(self, model: DreamLLM, components: Components | None = None):
        self.model = model
        self.components = components or TorchComponents(model)
        self.special = model.special
        self._uncond_cache: dict[str, torch.Tensor] = {}
        tok = model.tokenizer
        s = self.special
        banned = set(tok.all_special_ids) | {s.pad, s.im_start, s.im_end, s.im_patch, s.dream_end, s.bos}
        for placeholder in ("<image>", "<dream>"):
            banned.add(tok.convert_tokens_to_ids(placeholder))
        banned -= {s.eos, s.dream_start}
        # The model never learned to emit block tokens: the loop forces them, so sampling must not.
        self._banned = torch.tensor(sorted(i for i in banned if i is not None and 0 <= i < self._vocab_size()))

    def _vocab_size(self) -> int:
        return self.model.llm.config.vocab_size

    # ------------------------------------------------------------------------------------------ public API
    @torch.no_grad()
    def generate(self, requests: list[DocumentRequest], on_progress: Callable[[str, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_document: Callable[[int, Document], None] | None = None) -> list[Document]:
        """Generate one document per request, in lockstep. on_progress(event, index) with event in
        {"image", "document"}; on_document(index, document) as soon as a document is finished, so the caller
        can store it while the others go on; should_stop() is polled between decode and denoising steps."""
        # 1. check inputs
        for i, request in enumerate(requests):
            self.check_request(request, i)
        if not requests:
            return []
        started = time.perf_counter()

        def check_cancel():
            if should_stop and should_stop():
                raise GenerationCancelled("generation cancelled")

        # 2. encode prompts (text, input images, or caption + dream block)
        rows = []
        for i, request in enumerate(requests):
            row = _Row(index=i, request=request, text_gen=torch.Generator("cpu").manual_seed(request.params.seed))
            row.segment, row.dreaming = self.encode_prompt(request), request.image_only
            rows.append(row)
        finished: dict[int, Document] = {}

        # 3. prefill, then 4. decode until every document stops
        self._past, self._mask = None, None
        active = rows
        while active:
            check_cancel()
            self._forward(active)
            waiting = [r for r in active if r.dreaming]
            if waiting and self._time_to_paint(active, waiting):
                self._paint_dreams(waiting, check_cancel, on_progress)
            writing = []
            for row in active:
                if row.dreaming or row.stop_reason:
                    continue
                if row.forced is not None:
                    row.segment, row.forced = row.forced, None
                else:
                    writing.append(row)
            self._next_segments(writing)
            still = []
            for pos, row in enumerate(active):
                if row.stop_reason:
                    self._flush_text(row)
                    finished[row.index] = doc = self._document(row, time.perf_counter() - started, len(requests))
                    if on_progress:
                        on_progress("document", row.index)
                    if on_document:
                        on_document(row.index, doc)
                else:
                    still.append(pos)
            if len(still) < len(active):
                self._select_rows(still)
            active = [active[p] for p in still]
            self._maybe_compact()

        # 5. documents, in request order
        return [finished[i] for i in range(len(requests))]

    def check_request(self, request: DocumentRequest, index: int = 0) -> None:
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

    # ------------------------------------------------------------------------------------------ prompts
    def _tokens(self, text: str) -> list[int]:
        # split_special_tokens: a prompt that spells "<dream_start>" must not become the control token.
        return self.model.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

    def _embed(self, ids: list[int]) -> torch.Tensor:
        return self.model.embed_tokens(torch.tensor(ids, device=self.model.device))  # (T, H)

    def dream_block_embeddings(self) -> torch.Tensor:
        """`<dream_start>` + the learned queries + `<dream_end>`: (Q + 2, H)."""
        s = self.special
        ends = self._embed([s.dream_start, s.dream_end])
        return torch.cat([ends[:1], self.model.query_embeddings(1)[0], ends[1:]])

    def image_block_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """`<im_start>` + image features (P, H) + `<im_end>`: (P + 2, H)."""
        ends = self._embed([self.special.im_start, self.special.im_end])
        return torch.cat([ends[:1], features.to(ends.dtype), ends[1:]])

    def render_instruction(self, request: DocumentRequest) -> str:
        instruction = render(request.params.template, request.prompt)
        if request.images and IMAGE_PLACEHOLDER not in instruction:
            instruction = (IMAGE_PLACEHOLDER + "\n") * len(request.images) + instruction
        return chat_text(request.params.chat, instruction)

    def encode_prompt(self, request: DocumentRequest) -> torch.Tensor:
        """The context embeddings of one request, (T, H), image blocks in place of placeholders."""
        bos = [self.special.bos]
        if request.image_only:
            return torch.cat([self._embed(bos + self._tokens(request.prompt)), self.dream_block_embeddings()])
        pieces = self.render_instruction(request).split(IMAGE_PLACEHOLDER)
        features = []
        if request.images:
            features = self.read_images([pil_to_tensor(im).to(self.model.device) for im in request.images])
        parts = [self._embed(bos + self._tokens(pieces[0]))]
        for feats, piece in zip(features, pieces[1:]):
            parts.append(self.image_block_embeddings(feats))
            ids = self._tokens(piece)
            if ids:
                parts.append(self._embed(ids))
        return torch.cat(parts)

    # ------------------------------------------------------------------------------------------ the LLM
    def _forward(self, rows: list[_Row]) -> None:
        """Feed every row its segment, right-aligned in one left-padded batch of segments; keep last logits and dream states.
        A row waiting for its picture feeds nothing (masked pads only)."""
        lengths = [0 if r.segment is None else r.segment.shape[0] for r in rows]
        T, B = max(lengths), len(rows)
        if T == 0:
            return
        pad = self._embed([self.special.pad])[0]
        embeds = pad.expand(B, T, -1).clone()
        segment_mask = torch.zeros(B, T, dtype=torch.long, device=self.model.device)
        positions = torch.zeros(B, T, dtype=torch.long, device=self.model.device)
        for i, (row, n) in enumerate(zip(rows, lengths)):
            if n == 0:
                continue
            embeds[i, T - n:] = row.segment
            segment_mask[i, T - n:] = 1
            positions[i, T - n:] = torch.arange(row.real_len, row.real_len + n)
            row.real_len += n
        mask = segment_mask if self._mask is None else torch.cat([self._mask, segment_mask], dim=1)
        logits, hidden, self._past = self.components.lm_step(embeds, mask, positions, self._past)
        self._mask = mask
        q = self.special.num_dream_queries
        for i, (row, n) in enumerate(zip(rows, lengths)):
            if n == 0:
                row.waited += 1
                continue
            row.segment = None
            row.logits = logits[i]
            if row.dreaming:
                # the queries sit just before `<dream_end>`, the last position of the segment
                row.query_states = hidden[i, T - 1 - q:T - 1]  # (Q, H)

    @staticmethod
    def _time_to_paint(active: list[_Row], waiting: list[_Row]) -> bool:
        """Paint now, or let the waiting documents wait while the others write? The result is the same either
        way (a picture depends on its own condition and seed); only the UNet batch size changes."""
        nobody_else = len(waiting) == sum(1 for r in active if not r.stop_reason)
        return nobody_else or max(r.waited for r in waiting) >= PAINT_GATHER_STEPS

    def _next_segments(self, rows: list[_Row]) -> None:
        """Sample each row's next token (all rows in one call) and decide what it feeds next, or that it stops."""
        s = self.special
        for row in rows:
            if row.new_tokens >= row.params.max_new_tokens:
                row.stop_reason = "max_new_tokens"
        rows = [r for r in rows if not r.stop_reason]
        if not rows:
            return
        logits = torch.stack([r.logits for r in rows])  # (R, V), a copy: masking leaves the step's logits alone
        if len(self._banned):
            logits[:, self._banned.to(logits.device)] = float("-inf")
        for k, row in enumerate(rows):
            room_for_image = row.real_len + 1 + s.image_cost + 1 <= self.model.max_positions
            if row.images_done >= row.params.max_images or not room_for_image:
                logits[k, s.dream_start] = float("-inf")
        tokens = sample_tokens(logits, [r.params for r in rows], [r.text_gen for r in rows])
        writers = []
        for row, token in zip(rows, tokens):
            row.new_tokens += 1
            if token == s.eos:
                row.stop_reason = "eos"
            elif token == s.dream_start:
                self._flush_text(row)
                row.segment, row.dreaming = self.dream_block_embeddings(), True
            else:
                row.text_ids.append(token)
                if row.real_len + 1 > self.model.max_positions:
                    row.stop_reason = "context_full"
                else:
                    writers.append((row, token))
        if writers:
            embeds = self._embed([token for _, token in writers])  # one lookup for the whole batch
            for k, (row, _) in enumerate(writers):
                row.segment = embeds[k:k + 1]

    def _flush_text(self, row: _Row) -> None:
        if row.text_ids:
            text = self.model.tokenizer.decode(row.text_ids, skip_special_tokens=True)
            if text.strip():
                row.blocks.append(TextBlock(text))
            row.text_ids = []

    # ------------------------------------------------------------------------------------------ pictures
    def unconditional(self, negative_prompt: str = "") -> torch.Tensor:
        """The guidance condition: the queries after `<s>` alone (or `<s>` + a negative prompt). Prompt-independent,
        so computed once per negative prompt and cached. (Q, cross_dim)."""
        if negative_prompt not in self._uncond_cache:
            embeds = torch.cat([self._embed([self.special.bos] + self._tokens(negative_prompt)),
                                self.dream_block_embeddings()])[None]
            n = embeds.shape[1]
            mask = torch.ones(1, n, dtype=torch.long, device=embeds.device)
            positions = torch.arange(n, device=embeds.device)[None]
            _, hidden, _ = self.components.lm_step(embeds, mask, positions, None)
            q = self.special.num_dream_queries
            self._uncond_cache[negative_prompt] = self.model.condition(hidden[0, n - 1 - q:n - 1])
        return self._uncond_cache[negative_prompt]

    def _paint_dreams(self, dreamers: list[_Row], check_cancel, on_progress) -> None:
        conds = self.model.condition(torch.stack([r.query_states for r in dreamers]))  # (N, Q, cross_dim)
        default_size = self.model.head.default_image_size
        requests = []
        for row, cond in zip(dreamers, conds):
            p = row.params
            size = p.image_size or default_size
            requests.append(ImageRequest(cond=cond, uncond=self.unconditional(p.negative_prompt),
                                 seed=image_seed(p.seed, row.images_done), steps=p.steps, guidance=p.guidance,
                                 scheduler=p.scheduler, height=size, width=size))
        # Feed back the picture as stored (8-bit), so a resumed or re-read document sees the same pixels.
        images = [(image * 255).round() / 255 for image in self.paint(requests, check_cancel)]
        readers = [k for k, r in enumerate(dreamers) if not r.request.image_only]
        features = dict(zip(readers, self.read_images([images[k] for k in readers])))
        for k, (row, request) in enumerate(zip(dreamers, requests)):
            row.dreaming, row.waited = False, 0
            row.blocks.append(ImageBlock(index=row.images_done, width=request.width, height=request.height, seed=request.seed,
                                         image=tensor_to_pil(images[k])))
            if on_progress:
                on_progress("image", row.index)
            if row.request.image_only:
                row.stop_reason = "image_only"
            else:
                row.forced = self.image_block_embeddings(features[k])
                if row.real_len + row.forced.shape[0] > self.model.max_positions:
                    row.forced, row.stop_reason = None, "context_full"

    def read_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Image-block features (P, H) of pictures (3, h, w) in [0, 1], encoded in one batch per size."""
        features: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for indices in by_size.values():
            encoded = self.components.encode_images(torch.stack([images[i] for i in indices]))
            for i, f in zip(indices, encoded):
                features[i] = f
        return features

    def paint(self, requests: list[ImageRequest], check_cancel=None) -> list[torch.Tensor]:
        """Denoise every picture, batching those that share timesteps and size; returns (3, H, W) images in [0, 1]."""
        head = self.model.head
        results: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(group_key(request), []).append(i)
        for indices in groups.values():
            images = denoise_group([requests[i] for i in indices], self.components.unet, self.components.vae_decode,
                                   head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor,
                                   self.model.device, self.model.dtype, check_cancel)
            for i, image in zip(indices, images):
                results[i] = image
        return results

    # ------------------------------------------------------------------------------------------ the KV cache
    def _select_rows(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, dtype=torch.long, device=self.model.device)
        self._past = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self._past]
        self._mask = self._mask.index_select(0, idx)

    def _maybe_compact(self) -> None:
        """Drop the holes other documents' blocks left in each row, once they are half the cache.
        Keys are stored after RoPE, so moving them keeps every attention score the same."""
        if self._mask is None or self._mask.shape[0] == 0 or self._mask.shape[1] < COMPACT_MIN_LEN:
            return
        real = self._mask.sum(dim=1)
        length = int(real.max())
        if length * 2 > self._mask.shape[1]:
            return
        B = self._mask.shape[0]
        index = torch.zeros(B, length, dtype=torch.long, device=self._mask.device)
        mask = torch.zeros(B, length, dtype=self._mask.dtype, device=self._mask.device)
        for b in range(B):
            kept = torch.nonzero(self._mask[b], as_tuple=False)[:, 0]
            index[b, length - len(kept):] = kept
            mask[b, length - len(kept):] = 1
        self._past = [(self._gather(k, index), self._gather(v, index)) for k, v in self._past]
        self._mask = mask

    @staticmethod
    def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        b, h, _, d = x.shape
        return torch.gather(x, 2, index[:, None, :, None].expand(b, h, index.shape[1], d))

    # ------------------------------------------------------------------------------------------ results
    def _document(self, row: _Row, elapsed: float, batch_size: int) -> Document:
        request = row.request
        return Document(
            id=request.id or f"doc-{row.index}", prompt=request.prompt, model=self.model.info.name,
            params=request.params.to_dict(), blocks=row.blocks, title=request.title, stop_reason=row.stop_reason,
            timings={"seconds": round(elapsed, 4), "batch_size": batch_size, "new_tokens": row.new_tokens,
                     "images": row.images_done, "backend": self.components.name,
                     "dtype": self.model.info.dtype})  # issue 12: the dtype --dtype auto resolved to
