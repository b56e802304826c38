"""The model runner: runs the LM step the scheduler planned over the paged pool, as the device wants it.

    eager step     any mix of runs (prefill chunks, blocks fed back, decoding tokens): the step's index arrays
                   (positions, pool rows, keys, query padding) are built on the host, packed into one int64 array
                   and copied to the device once (from pinned memory, without blocking, on CUDA); attention is the
                   gather + SDPA of attention.py; shapes follow the step.
    bucket step    every run decodes one token: the rows are padded to the next bucket size (BUCKETS), the index
                   tensors are copied into that bucket's static buffers, and one fixed-shape function runs the
                   layers, the final norm and the LM head with flex attention over the pool in place. On CUDA it is
                   compiled (Triton) and captured as a CUDA graph per bucket, then replayed every step; with
                   `compile` on the CPU it is compiled too (tests/test_step.py compiles it with fullgraph=True).

Neither reads anything back: the generator's one wait a step is for its sampled tokens.

Rows come in multiples of ROWS (8): a CPU matmul gives a row the same bits whatever the other rows only when it
is not a matrix-vector product and the row count is a multiple of its block, so a step of 3 tokens runs 8 rows
(5 of nobody, writing the scratch page). That keeps a document's text the same whatever its neighbours; on a GPU
the rows are free (a decode step reads the weights once whatever the rows).
"""
from __future__ import annotations

import gc

import numpy as np
import torch

from .attention import NOBODY, FlexAttention, Group, Grouped, SdpaAttention, flex_block_mask, resolve
from .config import GeneratorConfig
from .kv import PAGE, PagePool, pages_for
from .lm import PagedLM, Run

ROWS = 8
BUCKETS = (8, 16, 32, 64, 128)
MIN_COLUMNS = 128  # key columns of the eager step's smallest attention group
NOBODY_RUN = Run(-1, 0, 1)  # a padding row: position 0 of nobody, in the scratch page


def bucket_for(rows: int) -> int | None:
    return next((b for b in BUCKETS if b >= rows), None)


class _Bucket:
    """Static buffers and the compiled (or captured) compute of one decode bucket."""

    def __init__(self, runner: "ModelRunner", rows: int):
        self.rows = rows
        pool, device = runner.pool, runner.device
        hidden = runner.lm.llm.config.hidden_size
        self.embeds = torch.zeros(rows, hidden, dtype=runner.dtype, device=device)
        # Each index its own buffer (Inductor wants what the attention's mask reads as inputs, not slices):
        # positions (rows, 1), write rows, owners (the slot whose pages a row reads), page counts, page lists.
        shapes = {"positions": (rows, 1), "write_rows": (rows,), "owners": (rows,), "counts": (rows,),
                  "pages": (rows, pool.pages + 1)}
        self.indices = {k: torch.zeros(shape, dtype=torch.int64, device=device) for k, shape in shapes.items()}
        # filled on the host, copied without blocking: safe to reuse, as every step ends waiting for its tokens
        self.host = {k: torch.zeros(shape, dtype=torch.int64, pin_memory=device.type == "cuda")
                     for k, shape in shapes.items()}
        self.compute = runner.compiled_step()
        self.graph = None
        self.outputs = None  # the captured graph's (logits, hidden), rewritten by every replay
        if runner.config.captures(device):
            self._capture(runner)

    def _inputs(self) -> tuple:
        return (self.embeds, *self.indices.values())

    def _capture(self, runner):
        self.fill(runner, [])  # every row padded: a step of nobody, writing only the scratch page
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up (compilation, autotuning) outside the capture
                self.compute(*self._inputs())
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the painter thread (painting="overlap") may allocate, launch or copy on its own stream
        # while this thread captures; "global" would fail the capture on those calls from another thread
        with torch.cuda.graph(self.graph, pool=runner.graph_pool, capture_error_mode="thread_local"):
            self.outputs = self.compute(*self._inputs())

    def fill(self, runner, runs: list[Run], embeds: torch.Tensor | None = None) -> None:
        pool = runner.pool
        host = {k: v.numpy() for k, v in self.host.items()}
        runs = [r for r in runs if r.slot >= 0]  # padding rows are the bucket's own
        host["positions"][:] = 0
        host["write_rows"][:] = pool.scratch * PAGE  # padded rows write the scratch page
        host["owners"][:] = NOBODY
        host["counts"][:] = 0
        host["pages"][:] = pool.scratch
        for b, run in enumerate(runs):
            pages = pages_for(run.start + 1)
            host["positions"][b, 0] = run.start
            host["write_rows"][b] = pool.rows(run.slot, run.start, 1)[0]
            host["owners"][b] = run.slot
            host["counts"][b] = pages
            host["pages"][b, :pages] = pool.table[run.slot][:pages]
        for k, buffer in self.indices.items():
            buffer.copy_(self.host[k], non_blocking=True)
        self.embeds.zero_()
        if embeds is not None:
            self.embeds[:len(runs)].copy_(embeds)

    def run(self, runner) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        return self.compute(*self._inputs())


class ModelRunner:
    def __init__(self, model, pool_tokens: int, config: GeneratorConfig):
        llm = model.llm
        cfg = llm.config
        self.model, self.config = model, config
        self.device, self.dtype = model.device, model.dtype
        self.lm = PagedLM(llm)
        self.lm_head = llm.lm_head
        head_dim = self.lm.head_dim
        self.pool = PagePool(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, pages_for(pool_tokens),
                             model.dtype, model.device)
        self.pool_tokens = self.pool.pages * PAGE
        self.scale = head_dim ** -0.5
        self.attention = resolve(config.attention, self.device)
        # Fixed-shape decode buckets: where they pay (compiled, or graphs on CUDA) and flex can attend in place.
        self.buckets_on = self.attention == "flex" and (config.compiles(self.device) or config.captures(self.device))
        self.buckets: dict[int, _Bucket] = {}
        self._compiled = None
        self.page_slot = torch.from_numpy(self.pool.page_slot).to(self.device)
        self.page_index = torch.from_numpy(self.pool.page_index).to(self.device)
        self.graph_pool = torch.cuda.graph_pool_handle() if config.captures(self.device) else None
        self._context_pages = pages_for(model.max_positions)
        self._columns = torch.arange(max(self._context_pages * PAGE, MIN_COLUMNS), device=self.device)

    def compiled_step(self):
        """The bucket step, compiled once for every bucket where compiling pays (dynamo makes the row count
        dynamic when a second bucket comes, so there are at most two compilations), else run as it is."""
        if not self.config.compiles(self.device):
            return self.bucket_compute
        if self._compiled is None:
            self._compiled = torch.compile(self.bucket_compute, fullgraph=True)
        return self._compiled

    def release(self) -> None:
        """Free the pool now, before another runner takes the memory: its compiled step and captured graphs hold
        it (dynamo's cache keeps the compiled step's `self` alive), so dropping the runner alone does not."""
        self.buckets.clear()
        self._compiled = None
        self.pool.kv = None
        if self.config.compiles(self.device):
            torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------------- the pool
    def open(self, slot: int, reserve: int) -> None:
        self.pool.open(slot, reserve)

    def close(self, slot: int) -> None:
        self.pool.close(slot)

    @property
    def kv_stats(self):
        return self.pool.stats

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """An int64 array on the device: on CUDA copied from pinned memory without blocking. pin_memory() takes its
        block from torch's caching host allocator, which hands a block out again only once the copies reading it
        are done, so several arrays of one step never overwrite each other in flight."""
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _sync_pages(self) -> None:
        if self.pool.changed:  # the flex mask reads page owners on the device
            both = self.to_device(np.stack([self.pool.page_slot, self.pool.page_index]))
            self.page_slot.copy_(both[0], non_blocking=True)
            self.page_index.copy_(both[1], non_blocking=True)
            self.pool.changed = False

    # ---------------------------------------------------------------------------------------- a step
    def forward(self, embeds: torch.Tensor, runs: list[Run],
                logits_for: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """embeds (N, H) of the runs end to end -> post-norm hidden (N, H) and float logits at the last token of
        the runs listed in logits_for (None if none)."""
        for run in runs:
            if self.pool.length[run.slot] != run.start:
                raise RuntimeError(f"slot {run.slot} holds {self.pool.length[run.slot]} tokens, the run starts at "
                                   f"{run.start}")
            self.pool.extend(run.slot, run.count)
        bucket = bucket_for(len(runs)) if self.buckets_on and all(r.count == 1 for r in runs) else None
        if bucket is not None:
            return self._bucket_step(bucket, embeds, runs, logits_for)
        n = embeds.shape[0]
        padding = -n % ROWS
        hidden = self.lm.forward(torch.nn.functional.pad(embeds, (0, 0, 0, padding)),
                                 *self._eager_inputs(runs + [NOBODY_RUN] * padding))[:n]
        if not logits_for:
            return hidden, None
        ends = (np.cumsum([r.count for r in runs]) - 1)[np.asarray(logits_for)]
        rows = self.to_device(np.concatenate([ends, np.full(-len(ends) % ROWS, ends[0])]))
        return hidden, self.lm_head(hidden.index_select(0, rows)).float()[:len(ends)]

    def _eager_inputs(self, runs: list[Run]):
        """positions, write rows, the pool, and the step's attention, from one host-to-device copy.

        Runs are grouped by their padded shape: the key columns they attend over (a power of two of at least
        MIN_COLUMNS) and their queries (1 to decode, else a power of two of at least 8), both decided by the run's
        own length. SDPA's CPU kernel gives a row the same bits whatever the other rows of its call, but not
        whatever the padding of its columns or queries, so a run's padding never depends on its neighbours."""
        offsets = np.cumsum([0] + [r.count for r in runs[:-1]])
        groups: dict[tuple[int, int], list[int]] = {}
        for k, r in enumerate(runs):
            queries = 1 if r.count == 1 else max(ROWS, 1 << (r.count - 1).bit_length())
            groups.setdefault((self._columns_for(r), queries), []).append(k)
        parts = [np.concatenate([np.arange(r.start, r.start + r.count) for r in runs]),  # positions (N,)
                 np.concatenate([self._rows(r) for r in runs])]  # write rows (N,)
        shapes = []  # per group: (rows, queries, columns, padded?, token order)
        for (columns, queries), members in groups.items():
            tokens = np.concatenate([offsets[k] + np.arange(runs[k].count) for k in members])
            parts.append(np.concatenate([self._key_rows(runs[k], columns // PAGE) for k in members]))
            # query positions (rows * queries,): a padded query repeats its run's last one
            parts.append(np.concatenate([runs[k].start + np.minimum(np.arange(queries), runs[k].count - 1)
                                         for k in members]))
            in_place = queries == 1 and len(groups) == 1  # every run decodes, all in this one group
            if not in_place:
                parts.append(np.concatenate([offsets[k] + np.minimum(np.arange(queries), runs[k].count - 1)
                                             for k in members]))  # pad: token per padded query
                parts.append(np.concatenate([b * queries + np.arange(runs[k].count)
                                             for b, k in enumerate(members)]))  # unpad: padded query per token
            shapes.append((len(members), queries, columns, in_place, tokens))
        order = np.concatenate([tokens for *_, tokens in shapes])
        reorder = len(groups) > 1
        if reorder:
            parts.append(np.argsort(order))  # tokens back to the step's order after the groups
        packed = iter(torch.split(self.to_device(np.concatenate(parts).astype(np.int64)),
                                  [len(part) for part in parts]))
        positions, write_rows = next(packed), next(packed)
        attends = []
        for rows, queries, columns, in_place, _ in shapes:
            key_rows, query_positions = next(packed), next(packed)
            pad, unpad = (None, None) if in_place else (next(packed), next(packed))
            mask = (self._columns[:columns] <= query_positions.view(rows, queries, 1)).unsqueeze(1)
            attends.append(SdpaAttention(Group(rows, queries, pad, unpad), key_rows, mask, columns,
                                         self.lm.kv_heads, self.scale))
        attend = attends[0] if not reorder else Grouped(attends, next(packed))
        return positions, write_rows, self.pool.kv, attend

    def _columns_for(self, run: Run) -> int:
        pages = max(MIN_COLUMNS // PAGE, pages_for(run.start + run.count))
        return min(1 << (pages - 1).bit_length(), self._context_pages) * PAGE

    def _rows(self, run: Run) -> np.ndarray:
        if run.slot < 0:
            return np.full(run.count, self.pool.scratch * PAGE, dtype=np.int64)
        return self.pool.rows(run.slot, run.start, run.count)

    def _key_rows(self, run: Run, pages: int) -> np.ndarray:
        if run.slot < 0:
            return np.full(pages * PAGE, self.pool.scratch * PAGE, dtype=np.int64)
        return self.pool.key_rows(run.slot, pages)

    def bucket_compute(self, embeds: torch.Tensor, positions: torch.Tensor, write_rows: torch.Tensor,
                       owners: torch.Tensor, counts: torch.Tensor,
                       pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed-shape decode step of one bucket: (rows, H) embeds, their positions (rows, 1), pool rows to
        write, owners, page counts and page lists (rows, pool pages + 1) -> (rows, V) float logits and hidden
        states. Compiles with fullgraph=True: no host sync, no branch on a tensor's value."""
        rows = embeds.shape[0]
        mask = flex_block_mask(pages, counts, owners, positions, self.page_slot, self.page_index)
        attend = FlexAttention(Group(rows, 1, None, None), mask, self.lm.kv_heads, self.scale)
        hidden = self.lm.forward(embeds, positions.view(rows), write_rows, self.pool.kv, attend)
        return self.lm_head(hidden).float(), hidden

    def _bucket_step(self, rows: int, embeds, runs, logits_for):
        if rows not in self.buckets:
            self.buckets[rows] = _Bucket(self, rows)
        bucket = self.buckets[rows]
        self._sync_pages()
        bucket.fill(self, runs, embeds)
        logits, hidden = bucket.run(self)
        n = len(runs)
        picked = self.to_device(np.asarray(logits_for, dtype=np.int64)) if logits_for else None
        return hidden[:n], (logits.index_select(0, picked) if picked is not None else None)
