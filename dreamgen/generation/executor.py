"""The executor: runs the LM step the scheduler planned, on a backend, over the slot pool's KV cache.

    PagedExecutor       torch: the LLaMA's layers over a paged cache allocated once (lm.py, kv.py)
    ComponentsExecutor  any Components (ONNX Runtime, TensorRT graphs): each slot keeps its own cache; the step
                        left-pads the runs into the graph's (B, T) input and keeps the new keys and values

Both take the same runs and give the same things back: post-norm hidden states of every fed token and the logits
of the runs that sample next. The executor decides nothing: what runs is the scheduler's.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .components import Components
from .kv import PagedKVCache
from .lm import PagedLM, Run


class Executor(Protocol):
    name: str

    def open(self, slot: int, reserve: int) -> None: ...

    def close(self, slot: int) -> None: ...

    def forward(self, embeds: torch.Tensor, runs: list[Run], logits_for: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds (N, H) of the runs end to end -> hidden (N, H), float logits (len(logits_for), V) at the last
        token of the runs listed."""


class PagedExecutor:
    name = "paged"

    def __init__(self, model, kv_tokens: int):
        llm = model.llm
        config = llm.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.cache = PagedKVCache(config.num_hidden_layers, config.num_key_value_heads, head_dim,
                                  PagedKVCache.pages_for(kv_tokens), model.dtype, model.device)
        self.lm = PagedLM(llm, self.cache)
        self.lm_head = llm.lm_head

    def open(self, slot, reserve):
        self.cache.open(slot, reserve)

    def close(self, slot):
        self.cache.close(slot)

    @torch.no_grad()
    def forward(self, embeds, runs, logits_for):
        hidden = self.lm.step(embeds, runs)
        ends = _run_ends(runs)
        logits = self.lm_head(hidden[[ends[i] for i in logits_for]]).float() if logits_for else None
        return hidden, logits

    @property
    def kv_stats(self):
        return self.cache.stats


class ComponentsExecutor:
    """Runs a backend's LM-step graph, which takes a batch's past (B, heads, L, D) and returns it grown."""

    name = "components"

    def __init__(self, components: Components, pad_embedding: torch.Tensor):
        self.components = components
        self.pad = pad_embedding  # (H,)
        self.past: dict[int, list[tuple[torch.Tensor, torch.Tensor]] | None] = {}  # slot -> per layer (heads, L, D)
        self.kv_stats = None

    def open(self, slot, reserve):
        self.past[slot] = None

    def close(self, slot):
        del self.past[slot]

    @torch.no_grad()
    def forward(self, embeds, runs, logits_for):
        B, T = len(runs), max(r.count for r in runs)
        device = embeds.device
        past_len = [0 if self.past[r.slot] is None else self.past[r.slot][0][0].shape[1] for r in runs]
        L = max(past_len)
        batch = self.pad.expand(B, T, -1).clone()
        mask = torch.zeros(B, L + T, dtype=torch.long, device=device)
        positions = torch.zeros(B, T, dtype=torch.long, device=device)
        at = 0
        for b, run in enumerate(runs):  # right-aligned: every run's last token is the batch's last position
            batch[b, T - run.count:] = embeds[at:at + run.count]
            mask[b, L - past_len[b]:L] = 1
            mask[b, L + T - run.count:] = 1
            positions[b, T - run.count:] = torch.arange(run.start, run.start + run.count)
            at += run.count
        past = self._batch_past(runs, L) if L else None
        logits, hidden, present = self.components.lm_step(batch, mask, positions, past)
        flat = []
        for b, run in enumerate(runs):
            keep = torch.cat([torch.arange(L - past_len[b], L), torch.arange(L + T - run.count, L + T)])
            self.past[run.slot] = [(k[b][:, keep], v[b][:, keep]) for k, v in present]
            flat.append(hidden[b, T - run.count:])
        return torch.cat(flat), (logits[logits_for].float() if logits_for else None)

    def _batch_past(self, runs, L):
        layers = None
        for run in runs:
            if self.past[run.slot] is not None:
                layers = len(self.past[run.slot])
                sample = self.past[run.slot][0][0]
                break
        batch = []
        for layer in range(layers):
            keys, values = [], []
            for run in runs:
                held = self.past[run.slot]
                k = held[layer][0] if held else sample.new_zeros(sample.shape[0], 0, sample.shape[2])
                v = held[layer][1] if held else sample.new_zeros(sample.shape[0], 0, sample.shape[2])
                pad = L - k.shape[1]
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            batch.append((torch.stack(keys), torch.stack(values)))
        return batch


def _run_ends(runs: list[Run]) -> list[int]:
    ends, at = [], 0
    for run in runs:
        at += run.count
        ends.append(at - 1)
    return ends
