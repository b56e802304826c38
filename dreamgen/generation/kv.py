"""The KV cache of the slot pool: fixed-size pages allocated once, each document holding the pages it fills.

    keys[layer], values[layer]   (pages, kv_heads, PAGE, head_dim), allocated once for the whole pool
    table[slot]                  the pages of the document in that slot, in position order

A document's token at position p lives in page table[slot][p // PAGE], row p % PAGE; it is written there once,
in place, and never moved. A finished document's pages go back to the free list and the next document takes
them. Pages are handed out lowest first, so the pool's used part stays compact (attention runs over it).

Admission reserves a document's worst case (its prompt, every token it may write and every picture it may
ask for, capped at the context) so a running document never finds the pool full: no preemption, no recompute,
and a document's numbers never depend on what else was running.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

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


class PagedKVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, pages: int, dtype, device):
        shape = (pages, kv_heads, PAGE, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.pages = pages
        self._free = list(range(pages))  # a heap: lowest page first
        self.table: dict[int, list[int]] = {}
        self.length: dict[int, int] = {}  # tokens written per slot
        self._reserved: dict[int, int] = {}  # pages promised per slot
        self.reserved_pages = 0
        # Per page: the slot that holds it (-1: free) and its place in that slot's table; read by the attention.
        self.page_slot = torch.full((pages,), -1, dtype=torch.long)
        self.page_index = torch.zeros(pages, dtype=torch.long)
        element = torch.tensor([], dtype=dtype).element_size()
        self.stats = KVStats(pool_pages=pages, page_bytes=2 * layers * kv_heads * PAGE * head_dim * element)

    # ---------------------------------------------------------------------------------------- admission
    @staticmethod
    def pages_for(tokens: int) -> int:
        return -(-tokens // PAGE)

    def can_reserve(self, tokens: int) -> bool:
        return self.reserved_pages + self.pages_for(tokens) <= self.pages

    def open(self, slot: int, tokens: int) -> None:
        """Give `slot` to a new document that may grow to `tokens` positions."""
        if slot in self.table:
            raise RuntimeError(f"slot {slot} is in use")
        need = self.pages_for(tokens)
        if self.reserved_pages + need > self.pages:
            raise RuntimeError(f"the KV pool has {self.pages - self.reserved_pages} free pages, {need} asked")
        self.table[slot], self.length[slot], self._reserved[slot] = [], 0, need
        self.reserved_pages += need

    def close(self, slot: int) -> None:
        """The document in `slot` is done: its pages go back to the pool."""
        for page in self.table.pop(slot):
            heapq.heappush(self._free, page)
            self.page_slot[page] = -1
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
            self.page_slot[page] = slot
            self.page_index[page] = len(table)
            table.append(page)
        self.length[slot] = length
        s = self.stats
        s.pages_in_use = self.pages - len(self._free)
        s.live_tokens += tokens
        s.peak_live_tokens = max(s.peak_live_tokens, s.live_tokens)
        if s.pages_in_use > s.peak_pages or (s.pages_in_use == s.peak_pages and s.live_tokens < s.live_at_peak):
            s.peak_pages, s.live_at_peak = s.pages_in_use, s.live_tokens

    def locations(self, slot: int, start: int, count: int) -> tuple[list[int], list[int]]:
        """(page, row) of positions start .. start + count - 1 of `slot`."""
        table = self.table[slot]
        positions = range(start, start + count)
        return [table[p // PAGE] for p in positions], [p % PAGE for p in positions]

    @property
    def high_water(self) -> int:
        """One past the highest page in use: attention looks at pages [0, high_water) only."""
        used = (self.page_slot >= 0).nonzero()
        return int(used.max()) + 1 if len(used) else 0
