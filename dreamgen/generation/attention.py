"""Attention over each document's own pages, in one kernel a layer.

The step's queries are grouped by document: row b holds the `queries` tokens its run feeds this step (decode:
one), padded where runs are shorter. Two ways to attend, the same numbers:

    sdpa   the eager default on the CPU: each row's pages are gathered once (one index_select of the pages it
           holds, in position order, so column l is position l, padded with the scratch page) and SDPA runs with a
           causal-by-position mask. Rows are grouped by their column count, a power of two decided by the row's
           own length (runner.py), so a row's numbers never depend on its neighbours; usually one group.
    flex   `flex_attention` over the pool in place, with a block mask built from the page table: a row visits only
           the pages it holds (kv_indices), and its mask_mod checks the page's owner and position, so no KV is
           copied and no page nobody holds is read. Every shape is fixed by the bucket (rows, queries, pool), so
           it compiles to one Triton kernel on CUDA and a step replays as a CUDA graph.

Both are built from tensors that already sit on the device; nothing is read back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv import PAGE

ATTENTION = ("auto", "sdpa", "flex")
NOBODY = -2  # the owner a padded row asks for: no page has it, so the row attends to nothing and reads nothing


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(attention: str, device: torch.device) -> str:
    """auto: flex where it compiles to a fused kernel (CUDA), the gather + SDPA on the CPU."""
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}: use one of {', '.join(ATTENTION)}")
    if attention == "auto":
        return "flex" if device.type == "cuda" and flex_available() else "sdpa"
    if attention == "flex" and not flex_available():
        raise ValueError("attention=flex needs torch.nn.attention.flex_attention (torch >= 2.5)")
    return attention


@dataclass
class Group:
    """The step's queries as (rows, queries): pad gathers them from the runs laid end to end, unpad back."""

    rows: int
    queries: int
    pad: torch.Tensor | None  # (rows * queries,) token index per padded query; None: decode, already in place
    unpad: torch.Tensor | None  # (N,) padded index per token

    def padded(self, q: torch.Tensor) -> torch.Tensor:
        """(N, H, D) -> (rows, H, queries, D)."""
        if self.pad is not None:
            q = q.index_select(0, self.pad)
        return q.view(self.rows, self.queries, *q.shape[1:]).transpose(1, 2)

    def flat(self, out: torch.Tensor) -> torch.Tensor:
        """(rows, H, queries, D) -> (N, H * D)."""
        out = out.transpose(1, 2).reshape(self.rows * self.queries, -1)
        return out if self.unpad is None else out.index_select(0, self.unpad)


@dataclass
class SdpaAttention:
    group: Group
    key_rows: torch.Tensor  # (rows * columns,) pool rows, each row's pages in order, padded with the scratch page
    mask: torch.Tensor  # (rows, 1, queries, columns) bool: column <= the query's position
    columns: int
    kv_heads: int
    scale: float

    def __call__(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        g, h = self.group, self.kv_heads
        keys = kv.index_select(0, self.key_rows).view(g.rows, self.columns, 2 * h, -1)
        out = F.scaled_dot_product_attention(g.padded(q), keys[:, :, :h].transpose(1, 2),
                                             keys[:, :, h:].transpose(1, 2), attn_mask=self.mask, scale=self.scale,
                                             enable_gqa=q.shape[1] != h)
        return g.flat(out)


@dataclass
class Grouped:
    """Several SDPA calls of one step (rows grouped by their key columns), back in the step's token order."""

    groups: list
    order: torch.Tensor  # (N,) place of each token in the groups' outputs laid end to end

    def __call__(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return torch.cat([group(q, kv) for group in self.groups]).index_select(0, self.order)


@dataclass
class FlexAttention:
    group: Group
    block_mask: object
    kv_heads: int
    scale: float

    def __call__(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        g, h = self.group, self.kv_heads
        pool = kv.transpose(0, 1)[None].expand(g.rows, -1, -1, -1)  # (rows, 2h, pool rows, D), no copy
        # the query contiguous: it is a strided slice of the fused qkv, which Inductor's CPU flex template rejects.
        # On CUDA the Triton kernel's tiles are a page (16): its KV tile must divide the block mask's (as vLLM
        # sets them for 16-token pages); its defaults (64, 128) would not.
        options = {"BLOCK_M": PAGE, "BLOCK_N": PAGE} if q.is_cuda else None
        out = flex_attention(g.padded(q).contiguous(), pool[:, :h], pool[:, h:], block_mask=self.block_mask,
                             scale=self.scale, enable_gqa=q.shape[1] != h, kernel_options=options)
        return g.flat(out)


def flex_block_mask(page_lists: torch.Tensor, page_counts: torch.Tensor, row_slots: torch.Tensor,
                    query_positions: torch.Tensor, page_slot: torch.Tensor, page_index: torch.Tensor):
    """The block mask of a step: row b visits the first page_counts[b] pages of page_lists[b] (all the pool's
    pages wide, padded with the scratch page), and a key counts where its page is row b's document's
    (row_slots[b]) and its position is at most the query's (query_positions[b, q])."""
    from torch.nn.attention.flex_attention import BlockMask

    rows, pool_pages = page_lists.shape
    queries = query_positions.shape[1]

    def mask_mod(b, h, q, k):
        page = k // PAGE
        return (page_slot[page] == row_slots[b]) & (page_index[page] * PAGE + k % PAGE <= query_positions[b, q])

    return BlockMask.from_kv_blocks(page_counts.view(rows, 1, 1).to(torch.int32),
                                    page_lists.view(rows, 1, 1, pool_pages).to(torch.int32),
                                    BLOCK_SIZE=(128, PAGE), mask_mod=mask_mod,
                                    seq_lengths=(queries, pool_pages * PAGE))
