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
"""
from __future__ import annotations

import numpy as np
import torch

from .attention import NOBODY, FlexAttention, Group, SdpaAttention, flex_block_mask, resolve
from .config import EngineConfig
from .kv import PAGE, PagePool, pages_for
from .lm import PagedLM, Run

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def bucket_for(rows: int) -> int | None:
    return next((b for b in BUCKETS if b >= rows), None)


class _Bucket:
    """Static buffers and the compiled (or captured) compute of one decode bucket."""

    def __init__(self, runner: "ModelRunner", rows: int):
        self.rows = rows
        pool, device = runner.pool, runner.device
        hidden = runner.lm.llm.config.hidden_size
        self.embeds = torch.zeros(rows, hidden, dtype=runner.dtype, device=device)
        # One int64 buffer for every index: positions, write rows, owners, page counts, then page lists.
        self.width = 4 + pool.pages + 1
        self.indices = torch.zeros(rows, self.width, dtype=torch.int64, device=device)
        self.compute = runner.bucket_compute
        if runner.config.compiles(device):
            self.compute = torch.compile(runner.bucket_compute, fullgraph=True, dynamic=False)
        self.graph = None
        self.outputs = None  # the captured graph's (logits, hidden), rewritten by every replay
        if runner.config.captures(device):
            self._capture(runner)

    def _capture(self, runner):
        self.fill(runner, [])  # every row padded: a step of nobody, writing only the scratch page
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up (compilation, autotuning) outside the capture
                self.compute(self.embeds, self.indices)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=runner.graph_pool):
            self.outputs = self.compute(self.embeds, self.indices)

    def fill(self, runner, runs: list[Run], embeds: torch.Tensor | None = None) -> None:
        pool = runner.pool
        host = np.zeros((self.rows, self.width), dtype=np.int64)
        host[:, 1] = pool.scratch * PAGE  # padded rows write the scratch page
        host[:, 2] = NOBODY
        host[:, 4:] = pool.scratch
        for b, run in enumerate(runs):
            pages = pages_for(run.start + 1)
            host[b, 0] = run.start
            host[b, 1] = pool.rows(run.slot, run.start, 1)[0]
            host[b, 2] = run.slot
            host[b, 3] = pages
            host[b, 4:4 + pages] = pool.table[run.slot][:pages]
        self.indices.copy_(runner.to_device(host), non_blocking=True)
        self.embeds.zero_()
        if embeds is not None:
            self.embeds[:len(runs)].copy_(embeds)

    def run(self, runner) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        return self.compute(self.embeds, self.indices)


class ModelRunner:
    def __init__(self, model, pool_tokens: int, config: EngineConfig):
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
        self.page_slot = torch.from_numpy(self.pool.page_slot).to(self.device)
        self.page_index = torch.from_numpy(self.pool.page_index).to(self.device)
        self.graph_pool = torch.cuda.graph_pool_handle() if config.captures(self.device) else None
        self._columns = torch.arange(model.max_positions + PAGE, device=self.device)

    # ---------------------------------------------------------------------------------------- the pool
    def open(self, slot: int, reserve: int) -> None:
        self.pool.open(slot, reserve)

    def close(self, slot: int) -> None:
        self.pool.close(slot)

    @property
    def kv_stats(self):
        return self.pool.stats

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _sync_pages(self) -> None:
        if self.pool.changed:  # the flex mask reads page owners on the device
            self.page_slot.copy_(self.to_device(self.pool.page_slot), non_blocking=True)
            self.page_index.copy_(self.to_device(self.pool.page_index), non_blocking=True)
            self.pool.changed = False

    # ---------------------------------------------------------------------------------------- a step
    def forward(self, embeds: torch.Tensor, runs: list[Run], logits_for: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        hidden = self.lm.forward(embeds, *self._eager_inputs(runs))
        if not logits_for:
            return hidden, None
        ends = np.cumsum([r.count for r in runs]) - 1
        rows = self.to_device(ends[np.asarray(logits_for)])
        return hidden, self.lm_head(hidden.index_select(0, rows)).float()

    def _eager_inputs(self, runs: list[Run]):
        """positions, write rows, the pool, and the step's attention, from one host-to-device copy."""
        pool = self.pool
        rows, queries = len(runs), max(r.count for r in runs)
        columns = max(pages_for(r.start + r.count) for r in runs) * PAGE
        n = sum(r.count for r in runs)
        decode = queries == 1
        parts = [np.concatenate([np.arange(r.start, r.start + r.count) for r in runs]),  # positions (N,)
                 np.concatenate([pool.rows(r.slot, r.start, r.count) for r in runs]),  # write rows (N,)
                 np.concatenate([pool.key_rows(r.slot, columns // PAGE) for r in runs]),  # key rows (rows * columns,)
                 # query positions (rows * queries,): a padded query repeats its run's last one
                 np.concatenate([r.start + np.minimum(np.arange(queries), r.count - 1) for r in runs])]
        if not decode:
            offsets = np.cumsum([0] + [r.count for r in runs[:-1]])
            parts.append(np.concatenate([o + np.minimum(np.arange(queries), r.count - 1)
                                         for o, r in zip(offsets, runs)]))  # pad (rows * queries,)
            parts.append(np.concatenate([b * queries + np.arange(r.count) for b, r in enumerate(runs)]))  # unpad (N,)
        packed = self.to_device(np.concatenate(parts).astype(np.int64))
        sizes = [n, n, rows * columns, rows * queries] + ([] if decode else [rows * queries, n])
        positions, write_rows, key_rows, query_positions, *padding = torch.split(packed, sizes)
        group = Group(rows, queries, *(padding or [None, None]))
        mask = (self._columns[:columns] <= query_positions.view(rows, queries, 1)).unsqueeze(1)
        attend = SdpaAttention(group, key_rows, mask, columns, self.lm.kv_heads, self.scale)
        return positions, write_rows, self.pool.kv, attend

    def bucket_compute(self, embeds: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed-shape decode step of one bucket: (rows, H) embeds and (rows, 4 + pages) indices -> (rows, V)
        float logits and hidden states. Compiles with fullgraph=True: no host sync, no branch on a tensor's value."""
        rows = embeds.shape[0]
        positions, write_rows, owners, counts = indices[:, 0], indices[:, 1], indices[:, 2], indices[:, 3]
        mask = flex_block_mask(indices[:, 4:], counts, owners, positions.view(rows, 1), self.page_slot,
                               self.page_index)
        attend = FlexAttention(Group(rows, 1, None, None), mask, self.lm.kv_heads, self.scale)
        hidden = self.lm.forward(embeds, positions, write_rows, self.pool.kv, attend)
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
