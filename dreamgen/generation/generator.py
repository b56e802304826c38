"""Interleaved document generation: DreamLLM writes, decides where pictures go, paints them, and reads them back.

Documents stream through a pool of slots (continuous batching, as vLLM does for text). Each step:

    1. admit     documents of the job take the free slots, in job order, while the KV budget holds their worst case
                 (the scheduler decides, scheduler.py; the generator prepares their prompts)
    2. schedule  the scheduler picks who feeds what: decoding documents one token each, newcomers a chunk of their
                 prompt, others a dream block or the image block of a picture just painted
    3. paint     overlap (painter_thread.py): the pictures the painter thread has finished since the last step are
                 fed back, as image blocks, to their own documents; when every document waits for a picture the
                 generator waits for the painter's next one instead. stepwise (painting.py): every picture in
                 flight takes one denoising step here, in this thread. gather: if it is time (nobody else can go
                 on, or a picture has waited long enough), every waiting picture is painted start to end here
    4. forward   one LM step over all the runs (runner.py), writing their keys and values in place
    5. sample    every document whose feed is done draws its next token on the device (sampling.py); the
                 step's one wait is the copy of those tokens to the host
    6. update    the scheduler hears back once (scheduler.update): who has a new feed, who waits for a picture,
                 who finished; a finished document (</s>, max_new_tokens, full context, image_only) is handed over
                 at once and its slot and pages go to the next document

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
from .config import DEFAULT_SLOTS, GeneratorConfig
from .diffusion import ImageRequest, image_seed
from .images import tensor_to_pil
from .kv import PAGE
from .lm import Run
from .memory import (MemoryPlan, available_host_memory, cuda_budget, kv_bytes_per_token, measure_cuda_step,
                     plan_pool, weights_bytes)
from .painter_thread import Failed, Painted, PainterThread
from .painting import Painter
from .prompting import DocumentRequest, Encoder
from .runner import ModelRunner
from .sampling import SamplingRows, row_key, sample
from .scheduler import DREAM, FINISH, Candidate, Scheduler, Seq, StepPlan

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SLOTS", "NOTHING_YET", "DocumentRequest", "GeneratorStats", "Generator"]

NOTHING_YET = object()  # a live source of requests has none right now: ask again at the next step
PICTURE_POLL_S = 0.05  # overlap, everyone waiting for a picture: how often the wait looks up (cancel, new requests)


@dataclass
class GeneratorStats:
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
    # (seconds, generator steps) from a document's dream block being fed to its picture being fed back; overlap
    # counts only the steps that ran the LM (the generator does not step while it waits for the painter)
    picture_waits: list = field(default_factory=list)
    stalled_seconds: float = 0.0  # time documents ready to write waited for whole pictures (gather painting)
    # time documents ready to write waited while the generator's thread painted: gather's whole pictures, stepwise's
    # denoising step of every generator step; none with overlap (the painter has a thread of its own)
    held_seconds: float = 0.0

    def count_step(self, busy: int, more_waiting: bool) -> None:
        self.steps += 1
        self.busy = busy
        self.slot_steps += busy
        if more_waiting:
            self.full_steps += 1
            self.full_slot_steps += busy

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def wait(self, quantile: float) -> tuple[float, float]:
        """(seconds, steps) a picture waited, at this quantile of the run's pictures."""
        if not self.picture_waits:
            return (0.0, 0.0)
        waits = sorted(self.picture_waits)
        steps = sorted(w[1] for w in self.picture_waits)
        at = min(len(waits) - 1, int(quantile * len(waits)))
        return waits[at][0], steps[at]

    @property
    def stall_share(self) -> float:
        """Share of the run's time in which documents ready to write waited for pictures."""
        return self.stalled_seconds / self.seconds if self.seconds else 0.0

    @property
    def held_share(self) -> float:
        """Share of the run's time in which documents ready to write waited while the generator's thread painted."""
        return self.held_seconds / self.seconds if self.seconds else 0.0

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
    picture: ImageRequest | None = None  # stepwise, overlap: the picture being painted for it, until fed back
    dreamed_at: tuple = (0.0, 0)  # (time, generator step) its dream block was fed: how long its picture took
    stop_reason: str = ""
    started: float = field(default_factory=time.perf_counter)

    @property
    def params(self):
        return self.request.params

    @property
    def images_done(self) -> int:
        return sum(isinstance(b, ImageBlock) for b in self.blocks)


class _Source:
    """The job's requests as the generator takes them: numbered in the order taken. A live source may say
    NOTHING_YET (none now): poll() asks it again, once a step."""

    def __init__(self, requests: Iterable[DocumentRequest]):
        self._requests = iter(requests)
        self.taken = 0
        self._next = next(self._requests, None)

    @property
    def ready(self) -> bool:
        """A request is there to take now."""
        return self._next is not None and self._next is not NOTHING_YET

    @property
    def exhausted(self) -> bool:
        return self._next is None

    def poll(self) -> None:
        if self._next is NOTHING_YET:
            self._next = next(self._requests, None)

    def take(self) -> tuple[int, DocumentRequest]:
        request, self._next = self._next, next(self._requests, None)
        self.taken += 1
        return self.taken - 1, request


def _whole_pages(tokens: int) -> int:
    return -(-tokens // PAGE) * PAGE


class Generator:
    """Writes illustrated documents with one model on one backend, `slots` documents at a time."""

    def __init__(self, model: DreamLLM, components: Components | None = None, config: GeneratorConfig | None = None):
        self.model = model
        self.config = config or GeneratorConfig()
        # The LM always runs on torch (runner.py: paged pool, buckets, graphs); a backend's components paint
        # (UNet, VAE) and read pictures (vision encoder).
        self.components = components or TorchComponents(model, compile=self.config.compiles(model.device))
        self.special = model.special
        self.encoder = Encoder(model, self.components.encode_images)
        self.painter = Painter(model, self.components, self.encoder)
        self._painter_thread: PainterThread | None = None  # overlap: started at a run's first picture, stopped at its end
        self.slots = self.config.slots_for(model.device)
        self._cuda_steps: dict[int, tuple[int, int, int]] = {}  # slots -> (free, step, card) bytes, measured once
        self._runner: ModelRunner | None = None  # kept across runs: its pool and compiled buckets are costly
        self.stats = GeneratorStats()

    # ------------------------------------------------------------------------------------------ public API
    def generate(self, requests: list[DocumentRequest], on_progress: Callable[[str, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_document: Callable[[int, Document], None] | None = None) -> list[Document]:
        """One document per request, `slots` at a time; returned in request order. on_progress(event, index) with
        event in {"image", "document"}; on_document(index, document) as soon as a document is finished;
        should_stop() is polled between decode and denoising steps."""
        requests = [self.resolved(request) for request in requests]  # the pool is sized from the values used
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
            on_stats: Callable[[GeneratorStats], None] | None = None, slots: int | None = None,
            job_tokens: int | None = None, least_tokens: int | None = None) -> GeneratorStats:
        """Stream `requests` through the slot pool; each document goes to on_document(index, doc) the moment it
        is finished (index: its place among the requests taken). A request that cannot run (a bad parameter)
        goes to on_failure(index, error) if given, else raises. A request whose should_stop() says so is dropped
        (on_progress("dropped", index)). should_stop() of the run raises GenerationCancelled. `requests` may
        yield NOTHING_YET (a live queue, empty now): the run goes on with what it has and asks again; it ends
        when the source is exhausted and every document has ended. `job_tokens`: the most KV positions the job's
        documents can use at once, when known (the pool is no larger); `least_tokens`: its largest document's."""
        slots = slots or self.slots
        progress = on_progress or (lambda kind, index: None)
        kv_tokens = self.memory_plan(slots, job_tokens, least_tokens).pool_tokens
        config = self.config
        scheduler = Scheduler(slots, kv_tokens, config.prefill_chunk, config.step_tokens, config.batching,
                              config.painting)
        self.painter.clear()  # pictures of a run that was cancelled
        self._stop_painter()  # (a run always stops its own; this is in case one was left)
        runner = self._runner_for(kv_tokens)
        stats = self.stats = GeneratorStats(slots=slots)
        docs: dict[int, _Doc] = {}
        source = _Source(requests)
        overlap = config.painting == "overlap"

        def check_cancel():
            if should_stop and should_stop():
                raise GenerationCancelled("generation cancelled")

        def painted(items: list) -> None:
            """Overlap: what the painter thread finished goes back to its documents now."""
            after = self._take_painted(items, scheduler, runner, docs, progress, on_failure)
            for seq in scheduler.update(StepPlan(), after):  # nothing was fed: only who goes on, who ended
                self._hand_over(docs.pop(seq.index), runner, slots, progress, on_document)

        try:
            while True:
                check_cancel()
                self._admit(source, scheduler, runner, docs, on_failure)
                self._drop_stopped(scheduler, runner, docs, progress)
                if overlap and self._painter_thread is not None:
                    painted(self._painter_thread.collect())
                if not scheduler.live:
                    if source.exhausted:
                        return stats
                    continue  # a live source, empty now: it waits a little itself
                plan = scheduler.schedule(more_waiting=source.ready)
                if overlap and not plan.runs:  # every document waits for a picture: wait for the painter's next
                    painted(self._painter_thread.wait(PICTURE_POLL_S))
                    continue
                stats.count_step(scheduler.busy, source.ready)
                after: dict[int, object] = {}
                if self.painter.pictures:  # stepwise: one denoising step for every picture in flight
                    started = time.perf_counter()
                    after.update(self._paint_step(docs, progress))
                    if plan.runs:
                        stats.held_seconds += time.perf_counter() - started
                if plan.paint:  # gather: the waiting pictures, start to end
                    after.update(self._paint([docs[s.index] for s in plan.paint], check_cancel, progress,
                                             writers_wait=bool(plan.runs)))
                if plan.runs:
                    after.update(self._step([(docs[s.index], n) for s, n in plan.runs], runner))
                for seq in scheduler.update(plan, after):
                    self._hand_over(docs.pop(seq.index), runner, slots, progress, on_document)
                stats.busy, stats.kv = scheduler.busy, runner.kv_stats
                if on_stats:
                    on_stats(stats)
        finally:  # however the run ends (done, cancelled, an error here or in the painter): no thread outlives it
            self._stop_painter()

    def _admit(self, source: "_Source", scheduler: Scheduler, runner: ModelRunner, docs: dict,
               on_failure: Callable[[int, Exception], None] | None) -> None:
        """Prepare the job's next documents (their prompts encoded) while the scheduler wants them, and open a
        slot for each it admits. A request that cannot run fails alone (on_failure), or raises without one."""
        source.poll()
        while True:
            if scheduler.wants_more() and source.ready:
                index, request = source.take()
                request = self.resolved(request)  # the model's defaults: the document records the values used
                try:
                    self.check_request(request, index)
                    feed = self.encoder.prompt(request)
                    if feed.shape[0] >= self.model.max_positions:  # prompt files are checked; a caller may not be
                        raise ParamsError(f"request {index}: the prompt is {feed.shape[0]} tokens, the model's "
                                          f"context {self.model.max_positions}")
                except DreamgenError as e:
                    if on_failure is None:
                        raise
                    on_failure(index, e)
                    continue
                scheduler.offer(Candidate(index, self._reserve(request, feed.shape[0]), feed.shape[0],
                                          payload=(request, feed)))
            candidate = scheduler.waiting
            seq = scheduler.admit()
            if seq is None:
                return
            request, feed = candidate.payload
            runner.open(seq.slot, seq.reserve)
            docs[seq.index] = _Doc(seq.index, request, seq, feed, then="dream" if request.image_only else "sample")

    def _drop_stopped(self, scheduler: Scheduler, runner: ModelRunner, docs: dict, progress) -> None:
        for seq in list(scheduler.live):
            doc = docs[seq.index]
            request = doc.request
            if request.should_stop and request.should_stop():
                runner.close(seq.slot)
                self.painter.drop(seq.index)
                if self._painter_thread is not None and doc.picture is not None:
                    self._painter_thread.drop(seq.index)
                scheduler.drop(seq)
                del docs[seq.index]
                progress("dropped", seq.index)

    def _hand_over(self, doc: _Doc, runner: ModelRunner, slots: int, progress, on_document) -> None:
        runner.close(doc.seq.slot)
        self._flush_text(doc)
        self.stats.documents += 1
        progress("document", doc.index)
        on_document(doc.index, self._document(doc, slots))

    def resolved(self, request: DocumentRequest) -> DocumentRequest:
        """`request` with its unset parameters given the model's defaults (ModelInfo.defaults)."""
        params = request.params.resolved(self.model.info.defaults)
        return request if params is request.params else dataclasses.replace(request, params=params)

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
        if self._runner is not None and self._runner.pool_tokens != _whole_pages(kv_tokens):
            self.release()
        if self._runner is None:
            self._runner = ModelRunner(self.model, kv_tokens, self.config)
        self._runner.pool.reset()
        return self._runner

    def release(self) -> None:
        """Give back the KV pool (most of a card's memory) now, and stop the painter thread if one is left; the
        next run makes new ones."""
        self._stop_painter()
        if self._runner is not None:
            self._runner.release()
            self._runner = None

    def _reserve(self, request: DocumentRequest, prompt_tokens: int) -> int:
        """A document's worst case in the pool: its prompt and all it may add, capped at the context."""
        return _whole_pages(min(self.model.max_positions, prompt_tokens + self._growth(request)))

    def _growth(self, request: DocumentRequest) -> int:
        """Positions a document may add after its prompt: every token it may write, and every picture."""
        if request.image_only:
            return 0
        p = request.params
        return p.max_new_tokens + p.max_images * (self.special.image_cost - 1)

    # ------------------------------------------------------------------------------------------ one step
    def _step(self, runs: list[tuple[_Doc, int]], runner: ModelRunner) -> dict[int, object]:
        """Feed every run, then sample for each document whose feed is done (all in one call). Returns what
        comes next for the documents whose feed ended (scheduler.update's `after`)."""
        embeds = torch.cat([doc.feed[doc.seq.fed:doc.seq.fed + n] for doc, n in runs])
        lm_runs = [Run(doc.seq.slot, doc.seq.length, n) for doc, n in runs]
        after: dict[int, object] = {}
        samplers = []
        for i, (doc, n) in enumerate(runs):
            if doc.seq.pending != n:
                continue  # its feed goes on at the next step
            if doc.then == "dream":
                after[doc.index] = DREAM
                doc.dreamed_at = (time.perf_counter(), self.stats.steps)
            elif doc.new_tokens >= doc.params.max_new_tokens:
                doc.stop_reason = "max_new_tokens"  # fed, but nothing more to write
                after[doc.index] = FINISH
            else:
                samplers.append(i)
        hidden, logits = runner.forward(embeds, lm_runs, samplers)
        self.stats.tokens += embeds.shape[0]
        q, at = self.special.num_dream_queries, 0
        for doc, n in runs:
            if doc.then == "dream":  # the queries sit just before `<dream_end>`, the feed's last position
                first = doc.feed.shape[0] - 1 - q  # feed offset of the first query
                lo, hi = max(first, doc.seq.fed), min(first + q, doc.seq.fed + n)
                if lo < hi:
                    if doc.query_states is None:
                        doc.query_states = hidden.new_empty(q, hidden.shape[1])
                    doc.query_states[lo - first:hi - first] = hidden[at + lo - doc.seq.fed:at + hi - doc.seq.fed]
            at += n
        dreamers = [doc for doc, _ in runs if after.get(doc.index) == DREAM]
        if dreamers and self.config.painting in ("stepwise", "overlap"):
            self._start_pictures(dreamers)
        if samplers:
            after.update(self._sample([runs[i][0] for i in samplers], [runs[i][1] for i in samplers], logits))
        return after

    def _sample(self, docs: list[_Doc], counts: list[int], logits: torch.Tensor) -> dict[int, object]:
        """Draw every sampling document's next token on the device; the tokens are the step's one read-back."""
        s, context = self.special, self.model.max_positions
        lengths = [doc.seq.length + n for doc, n in zip(docs, counts)]  # positions once this step's runs are in
        if len(self.encoder.banned):
            logits.index_fill_(1, self.encoder.banned_on(logits.device), float("-inf"))
        dream_allowed = [doc.images_done < doc.params.max_images and length + 1 + s.image_cost + 1 <= context
                         for doc, length in zip(docs, lengths)]
        rows = SamplingRows.build([d.params.temperature for d in docs], [d.params.top_p for d in docs],
                                  [row_key(d.params.seed, length) for d, length in zip(docs, lengths)],
                                  logits.device, dream_allowed=dream_allowed)
        logits[:, s.dream_start].add_(rows.dream_bias)
        tokens = sample(logits, rows).tolist()
        self.stats.new_tokens += len(tokens)
        after: dict[int, object] = {}
        writers = []
        for doc, length, token in zip(docs, lengths, tokens):
            doc.new_tokens += 1
            if token == s.eos:
                doc.stop_reason = "eos"
            elif token == s.dream_start:
                self._flush_text(doc)
                doc.feed, doc.then, doc.query_states = self.encoder.dream_block(), "dream", None
                after[doc.index] = doc.feed.shape[0]
                continue
            else:
                doc.text_ids.append(token)
                if length + 1 > context:
                    doc.stop_reason = "context_full"
                else:
                    writers.append((doc, token))
                    continue
            after[doc.index] = FINISH
        if writers:
            embeds = self.encoder.embed([token for _, token in writers])  # one lookup for the whole batch
            for k, (doc, _) in enumerate(writers):
                doc.feed, doc.then = embeds[k:k + 1], "sample"
                after[doc.index] = 1
        return after

    def _flush_text(self, doc: _Doc) -> None:
        if doc.text_ids:
            text = self.model.tokenizer.decode(doc.text_ids, skip_special_tokens=True)
            if text.strip():
                doc.blocks.append(TextBlock(text))
            doc.text_ids = []

    # ------------------------------------------------------------------------------------------ pictures
    def _image_request(self, doc: _Doc, cond: torch.Tensor) -> ImageRequest:
        p = doc.params
        size = p.image_size or self.model.head.default_image_size
        return ImageRequest(cond=cond, uncond=self.painter.unconditional(p.negative_prompt),
                            seed=image_seed(p.seed, doc.images_done), steps=p.steps, guidance=p.guidance,
                            scheduler=p.scheduler, height=size, width=size, cache_interval=p.cache_interval,
                            cache_until=p.cache_until, guidance_until=p.guidance_until)

    def _start_pictures(self, dreamers: list[_Doc]) -> None:
        """Stepwise: the pictures just asked for join the painting at the next generator step. Overlap: they go
        to the painter thread (started at the run's first picture) and the generator goes on."""
        conds = self.model.condition(torch.stack([d.query_states for d in dreamers]))  # (N, Q, cross_dim)
        painter = self.painter
        if self.config.painting == "overlap":
            if self._painter_thread is None:
                self._painter_thread = PainterThread(self.model, self.components)
            painter = self._painter_thread
        for doc, cond in zip(dreamers, conds):
            request = self._image_request(doc, cond)
            painter.start(doc.index, request)
            doc.picture = request

    def _stop_painter(self) -> None:
        if self._painter_thread is not None:
            self._painter_thread.stop()
            self._painter_thread = None

    def _take_painted(self, items: list, scheduler: Scheduler, runner: ModelRunner, docs: dict, progress,
                      on_failure: Callable[[int, Exception], None] | None) -> dict[int, object]:
        """Overlap: the painter thread's finished pictures fed back to their documents (a picture that could not
        start fails its document alone, through on_failure, or the run without one)."""
        items = [item for item in items if item.key in docs]  # (a dropped document's picture is never handed back)
        for item in items:
            if isinstance(item, Failed):
                if on_failure is None:
                    raise item.error
                doc = docs.pop(item.key)
                runner.close(doc.seq.slot)
                scheduler.drop(doc.seq)
                on_failure(item.key, item.error)
        items = [item for item in items if isinstance(item, Painted)]
        if not items:
            return {}
        finished = [docs[item.key] for item in items]
        return self._feed_back(finished, [doc.picture for doc in finished], [item.image for item in items],
                               progress, pils=[item.pil for item in items])

    def _paint_step(self, docs: dict, progress) -> dict[int, object]:
        """Stepwise: every picture in flight takes one denoising step; the finished ones are fed back."""
        done = self.painter.step()
        if not done:
            return {}
        finished = [docs[index] for index in done]
        return self._feed_back(finished, [doc.picture for doc in finished], [done[d.index] for d in finished],
                               progress)

    def _paint(self, dreamers: list[_Doc], check_cancel, progress, writers_wait: bool) -> dict[int, object]:
        """Gather: paint every waiting picture start to end while the text waits; each is fed back, as an image
        block, to its own document only."""
        started = time.perf_counter()
        conds = self.model.condition(torch.stack([d.query_states for d in dreamers]))  # (N, Q, cross_dim)
        requests = [self._image_request(doc, cond) for doc, cond in zip(dreamers, conds)]
        after = self._feed_back(dreamers, requests, self.painter.paint(requests, check_cancel), progress)
        if writers_wait:  # documents ready to write waited for these pictures, in this thread
            self.stats.stalled_seconds += time.perf_counter() - started
            self.stats.held_seconds += time.perf_counter() - started
        return after

    def _feed_back(self, docs: list[_Doc], requests: list[ImageRequest], images: list[torch.Tensor],
                   progress, pils: list | None = None) -> dict[int, object]:
        """Each picture into its document's blocks and, read by the vision encoder, back into its context.
        `pils`: the pictures' host copies when the painter made them (overlap: its own thread waited for the copy,
        so this one does not)."""
        # Fed back as stored (8-bit), so a resumed or re-read document sees the same pixels (rounding a rounded
        # picture again changes nothing).
        images = [(image * 255).round() / 255 for image in images]
        readers = [k for k, d in enumerate(docs) if not d.request.image_only]
        features = dict(zip(readers, self.encoder.read_images([images[k] for k in readers])))
        after: dict[int, object] = {}
        now = time.perf_counter()
        for k, (doc, request) in enumerate(zip(docs, requests)):
            doc.blocks.append(ImageBlock(index=doc.images_done, width=request.width, height=request.height,
                                         seed=request.seed, image=pils[k] if pils else tensor_to_pil(images[k])))
            doc.picture = None
            self.stats.pictures += 1
            self.stats.picture_waits.append((now - doc.dreamed_at[0], self.stats.steps - doc.dreamed_at[1]))
            progress("image", doc.index)
            block = None if doc.request.image_only else self.encoder.image_block(features[k])
            if block is None:
                doc.stop_reason = "image_only"
            elif doc.seq.length + block.shape[0] > self.model.max_positions:
                doc.stop_reason = "context_full"
            else:
                doc.feed, doc.then = block, "sample"
                after[doc.index] = block.shape[0]
                continue
            after[doc.index] = FINISH
        return after

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
