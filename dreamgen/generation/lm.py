"""One LM step over the paged KV cache: the LLaMA's own weights driven as a GPU wants them.

Every document in the step feeds a run of tokens (one decoded token, a chunk of its prompt, a dream block, an
image block); the runs are laid end to end (N tokens), so the projections and the MLP see one (N, hidden)
matrix. A layer is about fifteen kernels, whatever the number of documents:

    rms_norm -> qkv (one matmul: q, k and v weights fused) -> RoPE on q and k together, in place (flip, mul_,
    addcmul_)
    -> keys and values written once into their pool rows (one index_copy_) -> attention over each document's own
    pages (attention.py: one gather + SDPA, or one flex_attention) -> o_proj with the residual (one addmm)
    -> rms_norm -> gate and up (one matmul) -> silu * up -> down with the residual (one addmm)

The fused weights are loaded once: the q/k/v (and gate/up) modules' weights become views of one tensor, so the
checkpoint stays as released and no memory is doubled. Nothing here reads a value back from the device or
branches on one, so a step compiles into one graph (tests/test_step.py). The math is LlamaModel's; tests hold
it to transformers' forward within float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Run:
    """`count` tokens of the document in `slot`, at positions start .. start + count - 1."""

    slot: int
    start: int
    count: int


def _fuse(modules: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several Linear layers reading the same input; theirs become views of it."""
    weight = torch.cat([m.weight.data for m in modules])
    has_bias = all(m.bias is not None for m in modules)
    bias = torch.cat([m.bias.data for m in modules]) if has_bias else None
    at = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight.data = weight[at:at + rows]
        if has_bias:
            m.bias.data = bias[at:at + rows]
        at += rows
    return weight, bias


class _Layer:
    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv, self.qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        self.gate_up, self.gate_up_bias = _fuse([mlp.gate_proj, mlp.up_proj])
        self.o, self.o_bias = attn.o_proj.weight, attn.o_proj.bias
        self.down, self.down_bias = mlp.down_proj.weight, mlp.down_proj.bias
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.intermediate = mlp.gate_proj.weight.shape[0]


def _rms(x: torch.Tensor, norm) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


def _residual(x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """x + a @ weight.T (+ bias) in one kernel where there is no bias."""
    if bias is None:
        return torch.addmm(x, a, weight.t())
    return x + F.linear(a, weight, bias)


class PagedLM:
    def __init__(self, llm):
        self.llm = llm
        config = llm.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = [_Layer(layer) for layer in llm.model.layers]
        self.norm = llm.model.norm
        # RoPE tables for every position, computed once by the model's own rotary embedding (its scaling
        # included). sin is signed so that rotate_half(x) * sin == flip(halves of x) * signed_sin.
        weight = llm.model.embed_tokens.weight
        positions = torch.arange(config.max_position_embeddings, device=weight.device)[None]
        cos, sin = llm.model.rotary_emb(weight[:1].unsqueeze(0), positions)
        half = self.head_dim // 2
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(sin)
        self.rope = torch.stack([cos[0], sin[0] * sign], dim=1).to(weight.dtype)  # (positions, 2, D)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, write_rows: torch.Tensor, kv: torch.Tensor,
                attend) -> torch.Tensor:
        """x (N, hidden) of the runs end to end, their positions and pool rows (N,), the pool (layers, rows,
        2 * kv_heads, head_dim), attend(q, kv_layer) -> post-norm hidden states (N, hidden)."""
        n, heads, kv_heads, d = x.shape[0], self.heads, self.kv_heads, self.head_dim
        rope = self.rope.index_select(0, positions)
        cos, sin = rope[:, :1], rope[:, 1:]  # (N, 1, D): the same for every head
        for i, layer in enumerate(self.layers):
            qkv = F.linear(_rms(x, layer.norm1), layer.qkv, layer.qkv_bias).view(n, heads + 2 * kv_heads, d)
            qk = qkv[:, :heads + kv_heads]
            turned = qk.reshape(n, heads + kv_heads, 2, d // 2).flip(2).view(n, heads + kv_heads, d)
            qk.mul_(cos).addcmul_(turned, sin)  # rotate_half(x) * sin == turned * signed sin
            kv[i].index_copy_(0, write_rows, qkv[:, heads:])
            x = _residual(x, attend(qkv[:, :heads], kv[i]), layer.o, layer.o_bias)
            gate_up = F.linear(_rms(x, layer.norm2), layer.gate_up, layer.gate_up_bias)
            act = F.silu(gate_up[:, :layer.intermediate]) * gate_up[:, layer.intermediate:]
            x = _residual(x, act, layer.down, layer.down_bias)
        return _rms(x, self.norm)
