"""Interleaved document generation: DreamLLM writes, decides where pictures go, paints them, and reads them back.

Documents stream through a pool of slots (continuous batching, as vLLM does for text). Each step:

    1. admit     documents of the job take the free slots, in job order, while the KV budget holds their worst case
    2. plan      the scheduler picks who feeds what: decoding documents one token each, newcomers a chunk of their
                 prompt, others a dream block or the image block of a picture just painted
    3. paint     if it is time (nobody else can go on, or a picture has waited long enough), every waiting picture
                 is painted in one UNet batch and fed back, as an image block, to its own document only
    4. forward   one LM step over all the runs (runner.py), writing their keys and values in place
    5. sample    every document whose feed is done draws its next token on the device (sampling.py); the
                 step's one wait is the copy of those tokens to the host
    6. finish    a document that stops (</s>, max_new_tokens, full context, image_only) is handed over at once
                 and its slot and pages go to the next document

A document's result depends only on its own prompt, parameters and seed: its feeds are cut the same way whoever
runs beside it, its draws are keyed by its seed and position, its pictures by their own seeds.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .. import settings
from ..document import Document, ImageBlock, TextBlock
from ..errors import DreamgenError, GenerationCancelled, ParamsError
from ..model.dreamllm import DreamLLM
from .components import Components, TorchComponents
from .config import DEFAULT_SLOTS, EngineConfig
from .diffusion import ImageRequest, image_seed
from .images import tensor_to_pil
from .kv import PAGE
from .lm import Run
from .memory import (MemoryPlan, available_host_memory, cuda_budget, kv_bytes_per_token, measure_cuda_step,
                     plan_pool, weights_bytes)
from .painting import Painter
from .prompting import DocumentRequest, Encoder
from .runner import ModelRunner
from .sampling import SamplingRows, row_key, sample
from .scheduler import Scheduler, Seq, State

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SLOTS", "NOTHING_YET", "DocumentRequest", "EngineStats", "Generator"]

NOTHING_YET = object()  # a live source of requests has none right now: ask again at the next step


@dataclass
class EngineStats:
    """What a run did: for the progress display and the bench."""

    steps: int = 0
    tokens: int = 0  # positions fed
    new_tokens: int = 0  # tokens sampled
    pictures: int = 0
    documents: int = 0
    slot_steps: int = 0  # sum over steps of the documents in the pool
    full_steps: int = 0  # steps while documents were waiting for a slot
    full_slot_steps: int = 0  # their slot steps: occupancy until the queue drains = full_slot_steps / (slots * full_steps)
    slots: int = 0
    busy: int = 0
    started: float = field(default_factory=time.perf_counter)
    kv: object = None  # KVStats of the runner's pool

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def occupancy(self) -> float:
        """Share of the slots holding a document while the job still had documents waiting."""
        return self.full_slot_steps / (self.slots * self.full_steps) if self.full_steps else 1.0


@dataclass
class _Doc:
    """One document in the pool, as the generator holds it (its tensors and what it has written)."""

    index: int
    request: DocumentRequest
    seq: Seq
    feed: torch.Tensor  # (T, H) embeddings of the current feed
    then: str = "sample"  # after the feed: "sample" the next token, or "dream" (paint a picture)
    new_tokens: int = 0
    text_ids: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    query_states: torch.Tensor | None = None  # (Q, H) post-norm states at the queries of the last dream block
    stop_reason: str = ""
    started: float = field(default_factory=time.perf_counter)

    @property
    def params(self):
        return self.request.params

    @property
    def images_done(self) -> int:
        return sum(isinstance(b, ImageBlock) for b in self.blocks)


def _whole_pages(tokens: int) -> int:
    return -(-tokens // PAGE) * PAGE


class Generator:
    """Writes illustrated documents with one model on one backend, `slots` documents at a time."""

    def __init__(self, model: DreamLLM, components: Components | None = None, config: EngineConfig | None = None):
        self.model = model
        self.config = config or EngineConfig()
        # The LM always runs on torch (runner.py: paged pool, buckets, graphs); a backend's components paint
        # (UNet, VAE) and read pictures (vision encoder).
        self.components = components or TorchComponents(model, compile=self.config.compiles(model.device))
        self.special = model.special
        self.encoder = Encoder(model, self.components.encode_images)
        self.painter = Painter(model, self.components, self.encoder)
        self.slots = self.config.slots_for(model.device)
        self._cuda_steps: dict[int, tuple[int, int, int]] = {}  # slots -> (free, step, card) bytes, measured once
        self._runner: ModelRunner | None = None  # kept across runs: its pool and compiled buckets are costly
        self.stats = EngineStats()

    # ------------------------------------------------------------------------------------------ public API
    def generate(self, requests: list[DocumentRequest], on_progress: Callable[[str, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_document: Callable[[int, Document], None] | None = None) -> list[Document]:
        """One document per request, `slots` at a time; returned in request order. on_progress(event, index) with
        event in {"image", "document"}; on_document(index, document) as soon as a document is finished;
        should_stop() is polled between decode and denoising steps."""
        for i, request in enumerate(requests):
            self.check_request(request, i)
        finished: dict[int, Document] = {}

        def keep(index: int, doc: Document):
            finished[index] = doc
            if on_document:
                on_document(index, doc)

        reserves = sorted(self._reserve(request, self.encoder.length(request)) for request in requests)
        self.run(requests, on_document=keep, on_progress=on_progress, should_stop=should_stop,
                 job_tokens=sum(reserves[-self.slots:]), least_tokens=reserves[-1] if reserves else None)
        return [finished[i] for i in range(len(requests)) if i in finished]

    @torch.no_grad()
    def run(self, requests: Iterable[DocumentRequest], on_document: Callable[[int, Document], None],
            on_progress: Callable[[str, int], None] | None = None, should_stop: Callable[[], bool] | None = None,
            on_failure: Callable[[int, Exception], None] | None = None,
            on_stats: Callable[[EngineStats], None] | None = None, slots: int | None = None,
            job_tokens: int | None = None, least_tokens: int | None = None) -> EngineStats:
        """Stream `requests` through the slot pool; each document goes to on_document(index, doc) the moment it
        is finished (index: its place among the requests taken). A request that cannot run (a bad parameter)
        goes to on_failure(index, error) if given, else raises. A request whose should_stop() says so is dropped
        (on_progress("dropped", index)). should_stop() of the run raises GenerationCancelled. `requests` may
        yield NOTHING_YET (a live queue, empty now): the run goes on with what it has and asks again; it ends
        when the source is exhausted and every document has ended. `job_tokens`: the most KV positions the job's
        documents can use at once, when known (the pool is no larger); `least_tokens`: its largest document's."""
        slots = slots or self.slots
        progress = on_progress or (lambda kind, index: None)
        max_positions = self.model.max_positions
        kv_tokens = self.memory_plan(slots, job_tokens, least_tokens).pool_tokens
        config = self.config
        scheduler = Scheduler(slots, kv_tokens, config.prefill_chunk, config.step_tokens, config.batching)
        executor = self._runner_for(kv_tokens)
        stats = self.stats = EngineStats(slots=slots)
        docs: dict[int, _Doc] = {}
        source = iter(requests)
        taken = 0

        def take():
            nonlocal taken
            request = next(source, None)
            if request is None or request is NOTHING_YET:
                return request
            taken += 1
            return taken - 1, request

        waiting = take()  # the next request not yet admitted (None: no more; NOTHING_YET: none now)

        def check_cancel():
            if should_stop and should_stop():
                raise GenerationCancelled("generation cancelled")

        while True:
            check_cancel()
            # 1. admit
            while waiting is not None and waiting is not NOTHING_YET and scheduler.can_admit_any():
                index, request = waiting
                try:
                    self.check_request(request, index)
                    feed = self.encoder.prompt(request)
                    if feed.shape[0] >= max_positions:  # prompt files are checked for this; a caller may not be
                        raise ParamsError(f"request {index}: the prompt is {feed.shape[0]} tokens, the model's "
                                          f"context {max_positions}")
                except DreamgenError as e:
                    if on_failure is None:
                        raise
                    on_failure(index, e)
                    waiting = take()
                    continue
                reserve = self._reserve(request, feed.shape[0])
                if not scheduler.can_admit(reserve):
                    break
                seq = scheduler.admit(index, reserve, feed.shape[0])
                executor.open(seq.slot, reserve)
                params = request.params.resolved(self.model.info.guidance)
                if params is not request.params:  # the model's own scale: the document records the one it used
                    request = dataclasses.replace(request, params=params)
                docs[index] = _Doc(index, request, seq, feed, then="dream" if request.image_only else "sample")
                waiting = take()
            if config.batching == "lockstep":
                scheduler.close_admission()
            stats.busy = scheduler.busy
            if waiting is NOTHING_YET:
                waiting = take()  # the source waits a little itself when the pool is idle
            if not scheduler.live:
                if waiting is None:
                    break
                continue
            for doc in [docs[s.index] for s in scheduler.live]:
                if doc.request.should_stop and doc.request.should_stop():
                    self._release(doc, scheduler, executor, docs)
                    progress("dropped", doc.index)
            if not scheduler.live:
                continue

            # 2. plan, 3. paint
            plan = scheduler.plan(more_waiting=waiting is not None and waiting is not NOTHING_YET)
            if plan.paint:
                self._paint([docs[s.index] for s in plan.paint], scheduler, check_cancel, progress)
            scheduler.waited()
            stats.steps += 1
            stats.busy = scheduler.busy
            stats.slot_steps += scheduler.busy
            if waiting is not None and waiting is not NOTHING_YET:
                stats.full_steps += 1
                stats.full_slot_steps += scheduler.busy

            # 4. forward, 5. sample
            if plan.runs:
                self._step([(docs[s.index], n) for s, n in plan.runs], scheduler, executor)

            # 6. finish
            for seq in list(scheduler.live):
                doc = docs[seq.index]
                if doc.stop_reason:
                    self._flush_text(doc)
                    document = self._document(doc, slots)
                    self._release(doc, scheduler, executor, docs)
                    stats.documents += 1
                    progress("document", doc.index)
                    on_document(doc.index, document)
            stats.kv = getattr(executor, "kv_stats", None)
            if on_stats:
                on_stats(stats)
        return stats

    def check_request(self, request: DocumentRequest, index: int = 0) -> None:
        self.encoder.check(request, index)

    # ------------------------------------------------------------------------------------------ the pool
    def memory_plan(self, slots: int | None = None, job_tokens: int | None = None,
                    least_tokens: int | None = None) -> MemoryPlan:
        """The KV pool's size for `slots` documents (memory.py): on CUDA from the memory free after the weights
        and one measured peak step (measured once), on the CPU from what the job can use and available memory."""
        model, slots = self.model, slots or self.slots
        fixed = self.config.kv_tokens
        facts = dict(device=str(model.device), weights_bytes=weights_bytes(model), slots=slots,
                     kv_bytes_per_token=kv_bytes_per_token(model.llm.config, model.dtype), context=model.max_positions,
                     fixed_tokens=fixed, job_tokens=job_tokens, least_tokens=least_tokens)
        if fixed is not None:
            return plan_pool(budget_bytes=None, **facts)
        if model.device.type == "cuda":
            if slots not in self._cuda_steps:
                self._cuda_steps[slots] = measure_cuda_step(model, self.components, slots)
            free, step, total = self._cuda_steps[slots]
            budget = cuda_budget(free, step, settings.kv_memory_fraction(self.config.kv_fraction))
            return plan_pool(budget_bytes=budget, step_bytes=step, step="measured", device_bytes=total, **facts)
        available = available_host_memory()
        return plan_pool(budget_bytes=int(settings.kv_cpu_share() * available), device_bytes=available, **facts)

    def _runner_for(self, kv_tokens: int) -> ModelRunner:
        """The runner of this run: the last one if its pool is the size asked (its pages are all free between
        runs), else a new one (the old pool is freed first, so two never coexist)."""
        if self._runner is not None and self._runner.pool_tokens != -(-kv_tokens // PAGE) * PAGE:
            self._runner = None
        if self._runner is None:
            self._runner = ModelRunner(self.model, kv_tokens, self.config)
        return self._runner

    def _reserve(self, request: DocumentRequest, prompt_tokens: int) -> int:
        """A document's worst case in the pool: its prompt and all it may add, capped at the context."""
        return _whole_pages(min(self.model.max_positions, prompt_tokens + self._growth(request)))

    def _growth(self, request: DocumentRequest) -> int:
        """Positions a document may add after its prompt: every token it may write, and every picture."""
        if request.image_only:
            return 0
        p = request.params
        return p.max_new_tokens + p.max_images * (self.special.image_cost - 1)

    @staticmethod
    def _release(doc: _Doc, scheduler: Scheduler, executor: ModelRunner, docs: dict) -> None:
        executor.close(doc.seq.slot)
        scheduler.finish(doc.seq)
        del docs[doc.index]

    # ------------------------------------------------------------------------------------------ one step
    def _step(self, runs: list[tuple[_Doc, int]], scheduler: Scheduler, executor: ModelRunner) -> None:
        """Feed every run, then sample for each document whose feed is done (all in one call)."""
        embeds = torch.cat([doc.feed[doc.seq.fed:doc.seq.fed + n] for doc, n in runs])
        lm_runs = [Run(doc.seq.slot, doc.seq.length, n) for doc, n in runs]
        completes = [doc.seq.pending == n for doc, n in runs]
        samplers = []
        for i, (doc, _) in enumerate(runs):
            if completes[i] and doc.then == "sample":
                if doc.new_tokens >= doc.params.max_new_tokens:
                    doc.stop_reason = "max_new_tokens"  # fed, but nothing more to write
                else:
                    samplers.append(i)
        hidden, logits = executor.forward(embeds, lm_runs, samplers)
        self.stats.tokens += embeds.shape[0]
        q, at = self.special.num_dream_queries, 0
        for (doc, n), done in zip(runs, completes):
            if doc.then == "dream":  # the queries sit just before `<dream_end>`, the feed's last position
                first = doc.feed.shape[0] - 1 - q  # feed offset of the first query
                lo, hi = max(first, doc.seq.fed), min(first + q, doc.seq.fed + n)
                if lo < hi:
                    if doc.query_states is None:
                        doc.query_states = hidden.new_empty(q, hidden.shape[1])
                    doc.query_states[lo - first:hi - first] = hidden[at + lo - doc.seq.fed:at + hi - doc.seq.fed]
            scheduler.fed(doc.seq, n)
            if done and doc.then == "dream":
                scheduler.dream(doc.seq)
            at += n
        if samplers:
            self._sample([runs[i][0] for i in samplers], logits, scheduler)

    def _sample(self, docs: list[_Doc], logits: torch.Tensor, scheduler: Scheduler) -> None:
        """Draw every sampling document's next token on the device; the tokens are the step's one read-back."""
        s = self.special
        if len(self.encoder.banned):
            logits.index_fill_(1, self.encoder.banned_on(logits.device), float("-inf"))
        dream_allowed = [doc.images_done < doc.params.max_images
                         and doc.seq.length + 1 + s.image_cost + 1 <= self.model.max_positions for doc in docs]
        rows = SamplingRows.build([d.params.temperature for d in docs], [d.params.top_p for d in docs],
                                  [row_key(d.params.seed, d.seq.length) for d in docs], logits.device,
                                  dream_allowed=dream_allowed)
        logits[:, s.dream_start].add_(rows.dream_bias)
        tokens = sample(logits, rows).tolist()
        self.stats.new_tokens += len(tokens)
        writers = []
        for doc, token in zip(docs, tokens):
            doc.new_tokens += 1
            if token == s.eos:
                doc.stop_reason = "eos"
            elif token == s.dream_start:
                self._flush_text(doc)
                doc.feed, doc.then, doc.query_states = self.encoder.dream_block(), "dream", None
                scheduler.feed(doc.seq, doc.feed.shape[0])
            else:
                doc.text_ids.append(token)
                if doc.seq.length + 1 > self.model.max_positions:
                    doc.stop_reason = "context_full"
                else:
                    writers.append((doc, token))
        if writers:
            embeds = self.encoder.embed([token for _, token in writers])  # one lookup for the whole batch
            for k, (doc, _) in enumerate(writers):
                doc.feed, doc.then = embeds[k:k + 1], "sample"
                scheduler.feed(doc.seq, 1)

    def _flush_text(self, doc: _Doc) -> None:
        if doc.text_ids:
            text = self.model.tokenizer.decode(doc.text_ids, skip_special_tokens=True)
            if text.strip():
                doc.blocks.append(TextBlock(text))
            doc.text_ids = []

    # ------------------------------------------------------------------------------------------ pictures
    def _paint(self, dreamers: list[_Doc], scheduler: Scheduler, check_cancel, progress) -> None:
        conds = self.model.condition(torch.stack([d.query_states for d in dreamers]))  # (N, Q, cross_dim)
        default_size = self.model.head.default_image_size
        requests = []
        for doc, cond in zip(dreamers, conds):
            p = doc.params
            size = p.image_size or default_size
            requests.append(ImageRequest(cond=cond, uncond=self.painter.unconditional(p.negative_prompt),
                                         seed=image_seed(p.seed, doc.images_done), steps=p.steps,
                                         guidance=p.guidance, scheduler=p.scheduler, height=size, width=size))
        # Feed back the picture as stored (8-bit), so a resumed or re-read document sees the same pixels.
        images = [(image * 255).round() / 255 for image in self.painter.paint(requests, check_cancel)]
        readers = [k for k, d in enumerate(dreamers) if not d.request.image_only]
        features = dict(zip(readers, self.encoder.read_images([images[k] for k in readers])))
        for k, (doc, request) in enumerate(zip(dreamers, requests)):
            doc.blocks.append(ImageBlock(index=doc.images_done, width=request.width, height=request.height,
                                         seed=request.seed, image=tensor_to_pil(images[k])))
            self.stats.pictures += 1
            progress("image", doc.index)
            if doc.request.image_only:
                doc.stop_reason = "image_only"
                continue
            block = self.encoder.image_block(features[k])
            if doc.seq.length + block.shape[0] > self.model.max_positions:
                doc.stop_reason = "context_full"
                continue
            doc.feed, doc.then = block, "sample"
            scheduler.feed(doc.seq, block.shape[0])
        for doc in dreamers:
            if doc.stop_reason:
                doc.seq.state = State.FEEDING  # nothing to feed; it finishes at the end of this step

    # ------------------------------------------------------------------------------------------ results
    def _document(self, doc: _Doc, slots: int) -> Document:
        request = doc.request
        return Document(
            id=request.id or f"doc-{doc.index}", prompt=request.prompt, model=self.model.info.name,
            model_hash=self.model.info.hash,
            params=request.params.to_dict(), blocks=doc.blocks, title=request.title, stop_reason=doc.stop_reason,
            timings={"seconds": round(time.perf_counter() - doc.started, 4), "slots": slots,
                     "new_tokens": doc.new_tokens, "images": doc.images_done, "backend": self.components.name,
                     "dtype": self.model.info.dtype})  # the dtype --dtype auto resolved to

    # ------------------------------------------------------------------------------------------ helpers kept for
    # callers that build prompts or pictures by hand (tests, the naive baseline of the bench)
    def _tokens(self, text: str) -> list[int]:
        return self.encoder.tokens(text)

    def _embed(self, ids: list[int]) -> torch.Tensor:
        return self.encoder.embed(ids)

    def encode_prompt(self, request: DocumentRequest) -> torch.Tensor:
        return self.encoder.prompt(request)

    def render_instruction(self, request: DocumentRequest) -> str:
        return self.encoder.instruction(request)

    def read_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.encoder.read_images(images)

    def unconditional(self, negative_prompt: str = "") -> torch.Tensor:
        return self.painter.unconditional(negative_prompt)
