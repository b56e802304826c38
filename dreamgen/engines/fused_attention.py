"""The UNet's attention as one ONNX Runtime `com.microsoft::MultiHeadAttention` node, for graphs ONNX Runtime runs.

Traced plainly, scaled_dot_product_attention becomes MatMul -> Softmax -> MatMul with the whole (N x N) score
matrix in memory: at a 64 x 64 latent that is 4096 x 4096 per head, and it dominates the UNet step on CPU.
ONNX Runtime's fused kernel (CPU and CUDA) does the same arithmetic without it. TensorRT cannot parse the
com.microsoft domain, so the graphs it builds from ("portable") keep the plain form and TensorRT fuses by itself.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0


class _MultiHeadAttention(torch.autograd.Function):
    """In torch: attention as diffusers computes it. In the exported graph: one MultiHeadAttention node."""

    @staticmethod
    def forward(ctx, query, key, value, heads: int):
        batch, length, width = query.shape  # (B, N, H*d); key and value (B, L, H*d)

        def split(x):
            return x.view(batch, x.shape[1], heads, -1).transpose(1, 2)  # (B, H, N, d)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        return out.transpose(1, 2).reshape(batch, length, width)

    @staticmethod
    def symbolic(g, query, key, value, heads):
        # The default scale, 1/sqrt(d), is the one diffusers' AttnProcessor2_0 uses too.
        out = g.op("com.microsoft::MultiHeadAttention", query, key, value, num_heads_i=heads)
        out.setType(query.type())
        return out


class FusedAttentionProcessor:
    """diffusers' AttnProcessor2_0 for the plain case a Stable Diffusion UNet has (3-D input, no mask, no extra
    norms); any other case goes to AttnProcessor2_0 itself, so nothing is silently computed differently."""

    def __init__(self):
        self.fallback = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        plain = (hidden_states.ndim == 3 and attention_mask is None and attn.spatial_norm is None
                 and attn.group_norm is None and not attn.norm_cross and attn.norm_q is None and attn.norm_k is None
                 and not attn.residual_connection and attn.rescale_output_factor == 1.0)
        if not plain:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = _MultiHeadAttention.apply(attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attn.heads)
        return attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout


@contextlib.contextmanager
def fused_attention(unet):
    """The UNet with FusedAttentionProcessor everywhere, for one export; its own processors come back after."""
    before = unet.attn_processors
    unet.set_attn_processor(FusedAttentionProcessor())
    try:
        yield unet
    finally:
        unet.set_attn_processor(before)
