"""One LM step over the paged KV cache: the LLaMA's own layers (weights, norms, RoPE, MLP) driven token by token.

Every document in the step feeds a run of tokens (one decoded token, a chunk of its prompt, a dream block, an
image block); the runs are laid end to end (N tokens, no padding), so the projections and the MLP see one
(N, hidden) matrix. Each token's keys and values are written once into its document's page (kv.py). Attention:

    decode runs (1 token)    over the pool in place: every used page scores the query of the document that owns
                             it, a softmax per document across its pages (max, exp, sums by owner), no KV copied
    longer runs (prefill)    its own pages gathered (a newcomer's prompt, a block fed back) then causal SDPA

The math is LlamaModel's; tests hold it to transformers' forward within float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .kv import PAGE, PagedKVCache


@dataclass(frozen=True)
class Run:
    """`count` tokens of the document in `slot`, at positions start .. start + count - 1."""

    slot: int
    start: int
    count: int


class PagedLM:
    def __init__(self, llm, cache: PagedKVCache):
        self.llm = llm
        self.cache = cache
        config = llm.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5

    @torch.no_grad()
    def step(self, embeds: torch.Tensor, runs: list[Run]) -> torch.Tensor:
        """embeds (N, hidden) of the runs laid end to end -> post-norm hidden states (N, hidden)."""
        device = embeds.device
        cache = self.cache
        positions, pages, rows = [], [], []
        for run in runs:
            if cache.length[run.slot] != run.start:
                raise RuntimeError(f"slot {run.slot} holds {cache.length[run.slot]} tokens, the run starts at {run.start}")
            cache.extend(run.slot, run.count)
            page, row = cache.locations(run.slot, run.start, run.count)
            positions += range(run.start, run.start + run.count)
            pages += page
            rows += row
        positions = torch.tensor(positions, device=device)
        where = (torch.tensor(pages, device=device), slice(None), torch.tensor(rows, device=device))
        cos, sin = self.llm.model.rotary_emb(embeds, positions[None])
        plan = _AttentionPlan(self, runs, device)

        x = embeds
        for index, layer in enumerate(self.llm.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(-1, self.heads, self.head_dim)  # (N, Hq, D)
            k = attn.k_proj(h).view(-1, self.kv_heads, self.head_dim)
            v = attn.v_proj(h).view(-1, self.kv_heads, self.head_dim)
            q, k = apply_rotary_pos_emb(q, k, cos[0], sin[0], unsqueeze_dim=1)
            cache.keys[index][where] = k
            cache.values[index][where] = v
            out = plan.attend(q, cache.keys[index], cache.values[index])  # (N, Hq, D)
            x = x + attn.o_proj(out.reshape(out.shape[0], -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.llm.model.norm(x)


class _AttentionPlan:
    """What every layer of one step shares: which tokens decode, which prefill, and the masks."""

    def __init__(self, lm: PagedLM, runs: list[Run], device):
        self.lm, self.cache = lm, lm.cache
        offsets, at = [], 0
        for run in runs:
            offsets.append(at)
            at += run.count
        self.total = at
        decode = [(i, r) for i, r in enumerate(runs) if r.count == 1]
        self.decode_tokens = torch.tensor([offsets[i] for i, _ in decode], dtype=torch.long, device=device)
        self.prefill = [(offsets[i], r) for i, r in enumerate(runs) if r.count > 1]
        if decode:
            self._plan_decode([r for _, r in decode], device)

    def _plan_decode(self, runs: list[Run], device) -> None:
        cache = self.cache
        self.high = cache.high_water
        row_of_slot = torch.full((max(cache.table) + 2,), len(runs), dtype=torch.long)  # R: nobody's row
        for row, run in enumerate(runs):
            row_of_slot[run.slot] = row
        slot = cache.page_slot[:self.high]
        owner = torch.where(slot >= 0, row_of_slot[slot.clamp(min=0)], len(runs))  # (pages,)
        lengths = torch.tensor([run.start + 1 for run in runs] + [0])  # after this step's token
        key_position = cache.page_index[:self.high, None] * PAGE + torch.arange(PAGE)  # (pages, PAGE)
        self.owner = owner.to(device)
        self.valid = (key_position < lengths[owner][:, None]).to(device)
        self.rows = len(runs)

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        if len(self.decode_tokens):
            out[self.decode_tokens] = self._decode(q[self.decode_tokens], keys, values)
        for offset, run in self.prefill:
            out[offset:offset + run.count] = self._prefill(q[offset:offset + run.count], run, keys, values)
        return out

    def _decode(self, q, keys, values):
        """q (R, Hq, D) of documents decoding one token each, against the pool's pages in place."""
        lm, R, high = self.lm, self.rows, self.high
        g = lm.heads // lm.kv_heads
        q = torch.cat([q, q.new_zeros(1, *q.shape[1:])]).view(R + 1, lm.kv_heads, g, lm.head_dim)
        scores = torch.matmul(q[self.owner], keys[:high].transpose(-1, -2)) * lm.scale  # (pages, Hkv, g, PAGE)
        scores = scores.masked_fill(~self.valid[:, None, None, :], float("-inf"))
        page_max = scores.amax(dim=-1)  # (pages, Hkv, g)
        row_max = page_max.new_full((R + 1, lm.kv_heads, g), float("-inf"))
        row_max.scatter_reduce_(0, self.owner[:, None, None].expand_as(page_max), page_max, "amax")
        row_max[R] = 0.0  # pages of nobody: every score is -inf, keep exp() at 0 rather than nan
        weights = torch.exp(scores - row_max[self.owner][..., None])
        sums = weights.new_zeros(R + 1, lm.kv_heads, g).index_add_(0, self.owner, weights.sum(dim=-1))
        mixed = torch.matmul(weights, values[:high])  # (pages, Hkv, g, D)
        out = mixed.new_zeros(R + 1, lm.kv_heads, g, lm.head_dim).index_add_(0, self.owner, mixed)
        return (out[:R] / sums[:R, ..., None]).reshape(R, lm.heads, lm.head_dim)

    def _prefill(self, q, run: Run, keys, values):
        """q (T, Hq, D) of one document's run of T tokens, against its own pages (gathered), causally."""
        lm = self.lm
        pages = torch.tensor(self.cache.table[run.slot], device=q.device)
        length = run.start + run.count
        k = keys[pages].transpose(0, 1).reshape(lm.kv_heads, -1, lm.head_dim)[:, :length]  # (Hkv, L, D)
        v = values[pages].transpose(0, 1).reshape(lm.kv_heads, -1, lm.head_dim)[:, :length]
        query_position = torch.arange(run.start, length, device=q.device)
        mask = torch.arange(length, device=q.device)[None, :] <= query_position[:, None]  # (T, L)
        g = lm.heads // lm.kv_heads
        if g > 1:
            k, v = k.repeat_interleave(g, dim=0), v.repeat_interleave(g, dim=0)
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask, scale=lm.scale)  # (Hq, T, D)
        return out.transpose(0, 1)
