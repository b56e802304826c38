"""The KV cache of the slot pool: fixed-size pages allocated once, each document holding the pages it fills.

    kv[layer]          ((pages + 1) * PAGE, 2 * kv_heads, head_dim): row r holds the keys (first kv_heads) and
                       values (last kv_heads) of one position; page p is rows p * PAGE .. p * PAGE + PAGE - 1
    scratch page       the last page, held by nobody: padded rows of a fixed-shape step write there and padded
                       key lists point there, so a bucket never needs a branch on how full it is
    table[slot]        the pages of the document in that slot, in position order (host memory: the runner turns
                       it into device index tensors once per step, never reading anything back)

A document's token at position p lives in row table[slot][p // PAGE] * PAGE + p % PAGE; it is written there once,
in place, and never moved. A finished document's pages go back to the free list and the next document takes
them. Admission reserves a document's worst case (its prompt, every token it may write and every picture it may
ask for, capped at the context), so a running document never finds the pool full: no preemption, no recompute,
and a document's numbers never depend on what else was running.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch

PAGE = 16  # tokens per page: small enough that a document wastes at most 15 positions, large enough to batch


@dataclass
class KVStats:
    pool_pages: int
    page_bytes: int  # every layer's keys and values of one page
    pages_in_use: int = 0
    live_tokens: int = 0
    peak_pages: int = 0
    live_at_peak: int = 0
    peak_live_tokens: int = 0

    @property
    def pool_bytes(self) -> int:
        return self.pool_pages * self.page_bytes

    @property
    def peak_ratio(self) -> float:
        """Peak KV bytes in use over the bytes the live tokens need (1.0 = no waste)."""
        return self.peak_pages * PAGE / self.live_at_peak if self.live_at_peak else 0.0


def pages_for(tokens: int) -> int:
    return -(-tokens // PAGE)


class PagePool:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, pages: int, dtype, device):
        self.kv = torch.zeros(layers, (pages + 1) * PAGE, 2 * kv_heads, head_dim, dtype=dtype, device=device)
        self.pages = pages
        self.scratch = pages  # the page nobody holds
        self._free = list(range(pages))  # a heap: lowest page first
        self.table: dict[int, list[int]] = {}
        self.length: dict[int, int] = {}  # tokens written per slot
        self._reserved: dict[int, int] = {}  # pages promised per slot
        self.reserved_pages = 0
        # Per page: the slot holding it (-1: nobody) and its place in that slot's table. The flex attention's mask
        # reads them on the device; `changed` says the device copy is stale (pages were taken or given back).
        self.page_slot = np.full(pages + 1, -1, dtype=np.int64)
        self.page_index = np.zeros(pages + 1, dtype=np.int64)
        self.changed = True
        element = torch.tensor([], dtype=dtype).element_size()
        self.stats = KVStats(pool_pages=pages, page_bytes=2 * layers * kv_heads * PAGE * head_dim * element)

    # ---------------------------------------------------------------------------------------- admission
    def can_reserve(self, tokens: int) -> bool:
        return self.reserved_pages + pages_for(tokens) <= self.pages

    def open(self, slot: int, tokens: int) -> None:
        """Give `slot` to a new document that may grow to `tokens` positions."""
        if slot in self.table:
            raise RuntimeError(f"slot {slot} is in use")
        need = pages_for(tokens)
        if self.reserved_pages + need > self.pages:
            raise RuntimeError(f"the KV pool has {self.pages - self.reserved_pages} free pages, {need} asked")
        self.table[slot], self.length[slot], self._reserved[slot] = [], 0, need
        self.reserved_pages += need

    def close(self, slot: int) -> None:
        """The document in `slot` is done: its pages go back to the pool."""
        for page in self.table.pop(slot):
            heapq.heappush(self._free, page)
            self.page_slot[page] = -1
        self.changed = True
        self.stats.pages_in_use = self.pages - len(self._free)
        self.stats.live_tokens -= self.length.pop(slot)
        self.reserved_pages -= self._reserved.pop(slot)

    # ---------------------------------------------------------------------------------------- writing
    def extend(self, slot: int, tokens: int) -> None:
        """Make room for `tokens` more positions of `slot` (pages are taken as they fill)."""
        length = self.length[slot] + tokens
        table = self.table[slot]
        while len(table) * PAGE < length:
            if len(table) >= self._reserved[slot]:
                raise RuntimeError(f"slot {slot} grew past its reservation of {self._reserved[slot] * PAGE} tokens")
            page = heapq.heappop(self._free)
            self.page_slot[page], self.page_index[page] = slot, len(table)
            self.changed = True
            table.append(page)
        self.length[slot] = length
        s = self.stats
        s.pages_in_use = self.pages - len(self._free)
        s.live_tokens += tokens
        s.peak_live_tokens = max(s.peak_live_tokens, s.live_tokens)
        if s.pages_in_use > s.peak_pages or (s.pages_in_use == s.peak_pages and s.live_tokens < s.live_at_peak):
            s.peak_pages, s.live_at_peak = s.pages_in_use, s.live_tokens

    def rows(self, slot: int, start: int, count: int) -> np.ndarray:
        """Pool rows of positions start .. start + count - 1 of `slot`."""
        positions = np.arange(start, start + count)
        return np.asarray(self.table[slot], dtype=np.int64)[positions // PAGE] * PAGE + positions % PAGE

    def key_rows(self, slot: int, pages: int) -> np.ndarray:
        """The rows of the first `pages` pages of `slot`, padded with the scratch page: (pages * PAGE,)."""
        held = self.table[slot][:pages]
        table = np.full(pages, self.scratch, dtype=np.int64)
        table[:len(held)] = held
        return (table[:, None] * PAGE + np.arange(PAGE)).reshape(-1)

    def page_list(self, slot: int, pages: int) -> np.ndarray:
        """The first `pages` pages of `slot`, padded with the scratch page."""
        held = self.table[slot][:pages]
        table = np.full(pages, self.scratch, dtype=np.int64)
        table[:len(held)] = held
        return table
