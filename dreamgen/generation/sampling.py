"""Next-token sampling on the device, each document's randomness its own.

Greedy at temperature 0; otherwise temperature + nucleus (top_p) as a Gumbel race: the token with the largest
logit / T - log(-log U) wins, which is a draw from softmax(logit / T). A greedy row in a sampled batch runs the
same race with its noise scaled by 0, so the whole batch is one argmax. The uniforms are counter-based: a row's
U for token v is a hash of (the row's key, v), and the key is a hash of the document's seed and the position it
samples at (`row_key`, on the host, a few integers a step). So the same document draws the same tokens
whatever its neighbours, its slot or the batch size, nothing is copied to the host but the chosen tokens, and no
generator state has to be kept or moved.

The hash works in int64 on 32-bit values (Mueller's integer hash: two rounds of shift-xor-multiply), so no product
overflows and every device computes the same bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B
_GOLDEN = 0x9E3779B1
_NO_NUCLEUS = 2.0  # a top_p no cumulative mass reaches: the row keeps every token


def row_key(seed: int, position: int) -> int:
    """A 32-bit key for one draw of one document (splitmix64 of seed and position)."""
    z = (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2 ** 64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2 ** 64 - 1)
    return (z ^ (z >> 31)) & _MASK32


@dataclass
class SamplingRows:
    """What each sampling row needs, as device tensors (copied once a step)."""

    inverse_temperature: torch.Tensor  # (B,) float32, 1 for greedy rows
    noise: torch.Tensor  # (B,) float32: 1, or 0 for greedy rows
    top_p: torch.Tensor  # (B,) float32
    key: torch.Tensor  # (B,) int64
    dream_bias: torch.Tensor  # (B,) float32: 0, or -inf where the row may not start a picture
    random: bool  # some row samples
    nucleus: bool  # some row cuts its tail

    @classmethod
    def build(cls, temperatures: list[float], top_ps: list[float], keys: list[int], device,
              dream_allowed: list[bool] | None = None) -> "SamplingRows":
        t = np.asarray(temperatures, dtype=np.float32)
        greedy = t <= 0
        inverse = (1.0 / np.where(greedy, 1.0, t)).astype(np.float32)
        p = np.asarray(top_ps, dtype=np.float32)
        nucleus = (~greedy) & (p < 1.0)
        p = np.where(nucleus, p, _NO_NUCLEUS).astype(np.float32)
        allowed = np.ones(len(t), dtype=bool) if dream_allowed is None else np.asarray(dream_allowed, dtype=bool)
        bias = np.where(allowed, 0.0, -np.inf).astype(np.float32)
        floats = torch.from_numpy(np.stack([inverse, (~greedy).astype(np.float32), p, bias]))
        ints = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        if device.type == "cuda":
            floats, ints = floats.pin_memory(), ints.pin_memory()
        floats, ints = floats.to(device, non_blocking=True), ints.to(device, non_blocking=True)
        return cls(floats[0], floats[1], floats[2], ints, floats[3], bool((~greedy).any()), bool(nucleus.any()))


_offsets: dict[tuple, torch.Tensor] = {}


def _token_offsets(vocab: int, device) -> torch.Tensor:
    key = (vocab, str(device))
    if key not in _offsets:
        _offsets[key] = (torch.arange(vocab, dtype=torch.int64, device=device) * _GOLDEN) & _MASK32
    return _offsets[key]


def _odd_integers(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B,) int64 keys -> (B, vocab) float32 odd integers 2k + 1, k uniform in [0, 2^24): a pure function of
    (key, token). U = (2k + 1) / 2^25 is uniform in (0, 1), never 0 or 1."""
    x = keys[:, None] ^ _token_offsets(vocab, keys.device)
    for _ in range(2):
        x = (((x >> 16) ^ x) * _MIX) & _MASK32
    x = (x >> 16) ^ x
    return ((x >> 7) | 1).to(torch.float32)


def uniforms(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    return _odd_integers(keys, vocab) * (1.0 / (1 << 25))


_LOG_2_25 = 25 * math.log(2)


def sample(logits: torch.Tensor, rows: SamplingRows) -> torch.Tensor:
    """logits (B, V) float, -inf where a token is not allowed -> (B,) token ids, on the device."""
    if not rows.random:
        return logits.argmax(dim=-1)
    scaled = logits * rows.inverse_temperature[:, None]
    if rows.nucleus:
        probs = torch.softmax(scaled, dim=-1)
        ordered, _ = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest head whose mass reaches top_p (the top token always stays): the cut is the
        # probability of the last token kept
        inside = (torch.cumsum(ordered, dim=-1) - ordered) < rows.top_p[:, None]
        cut = ordered.masked_fill(~inside, float("inf")).amin(dim=-1, keepdim=True)
        scaled = scaled.masked_fill(probs < cut, float("-inf"))
    # logit / T + Gumbel noise -log(-log U), with -log U = 25 log 2 - log(2k + 1)
    exponential = _LOG_2_25 - torch.log(_odd_integers(rows.key, logits.shape[1]))
    return torch.addcmul(scaled, torch.log(exponential), rows.noise[:, None], value=-1).argmax(dim=-1)


def sample_one(logits: torch.Tensor, temperature: float, top_p: float, seed: int, position: int) -> int:
    """One row (V,) -> a token id, exactly as that row would be drawn inside a batch (for the naive baseline)."""
    rows = SamplingRows.build([temperature], [top_p], [row_key(seed, position)], logits.device)
    return int(sample(logits[None].float(), rows)[0])
