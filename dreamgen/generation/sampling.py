"""Next-token sampling for a whole lockstep batch at once, each document with its own generator.

Greedy at temperature 0; otherwise temperature + nucleus (top_p) sampling as an exponential race: the token with
the largest p_i / E_i wins, E_i = -log(U_i) with U_i uniform from the document's own generator. That is the
draw `torch.multinomial` makes, but with uniforms (fast) instead of its exponentials (slow), and for every row
of the batch in one tensor. A document's text stays independent of its neighbours: its generator advances by
one vocabulary of uniforms per token whatever the batch, and an argmax, unlike an inverted cumulative sum,
does not move with the last bits of other tokens' probabilities.
"""
from __future__ import annotations

import torch

from ..params import GenerationParams


def sample_tokens(logits: torch.Tensor, params: list[GenerationParams], generators: list[torch.Generator]) -> list[int]:
    """logits (B, V), with -inf where a token is not allowed -> one token id per row."""
    greedy = [i for i, p in enumerate(params) if p.temperature <= 0]
    tokens = [0] * len(params)
    if greedy:
        for i, token in zip(greedy, torch.argmax(logits[greedy], dim=-1).tolist()):
            tokens[i] = token
    plain = [i for i, p in enumerate(params) if p.temperature > 0 and p.top_p >= 1.0]
    nucleus = [i for i, p in enumerate(params) if p.temperature > 0 and p.top_p < 1.0]
    for rows, truncate in ((plain, False), (nucleus, True)):  # apart, so a row never depends on its neighbours
        if rows:
            picks = _draw(logits[rows], [params[i] for i in rows], [generators[i] for i in rows], truncate)
            for i, token in zip(rows, picks):
                tokens[i] = token
    return tokens


def _draw(logits: torch.Tensor, params: list[GenerationParams], generators: list[torch.Generator],
          truncate: bool) -> list[int]:
    temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32)
    probs = torch.softmax(logits.float().cpu() / temperature[:, None], dim=-1)  # (S, V)
    if truncate:
        top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest head whose mass reaches top_p (the top token always stays)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p[:, None]
        probs = probs.scatter(1, order, sorted_probs.masked_fill(outside, 0.0))
    uniforms = torch.stack([torch.rand(probs.shape[1], generator=g) for g in generators])  # (S, V)
    return torch.argmax(probs / -torch.log(uniforms), dim=-1).tolist()


def sample_token(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator) -> int:
    """One row: logits (V,) -> a token id, exactly as that row would be drawn inside a batch."""
    return sample_tokens(logits[None], [params], [generator])[0]
