"""Reusing the UNet's deep features across neighbouring denoising steps (the DeepCache idea, Ma et al. 2023).

Between two neighbouring steps the UNet's deep features (its lower down blocks, the mid block and the upper
up blocks, at low resolution) change little, while the shallow skip branches carry the detail that changes most.
So a picture takes a full UNet pass every `cache_interval` steps and keeps the feature that enters the shallow up
blocks; in between, only the shallow part runs: conv_in and the first CACHE_DEPTH down blocks (the skips), then
the last CACHE_DEPTH up blocks from the kept feature.

`split_unet` below is diffusers' UNet2DConditionModel.forward cut at that depth, for the plain text-conditioned
UNets dreamgen paints with (no class, addition or image-projection embeddings, no attention masks, no adapters):
`supports_split` says whether a UNet is one. One call serves a batch whose rows are at different phases: the
shallow part runs on every row, the deep part only on the rows that need a full step.
"""
from __future__ import annotations

import torch

# How many down blocks (and matching up blocks) run every step: the shallowest cut, as DeepCache's default,
# skips the most work. A UNet needs at least CACHE_DEPTH + 1 down blocks to be cut.
CACHE_DEPTH = 1


def supports_split(unet) -> bool:
    """Whether `split_unet` computes exactly what this UNet's forward does."""
    config = unet.config
    return (len(unet.down_blocks) > CACHE_DEPTH and len(unet.up_blocks) == len(unet.down_blocks)
            and getattr(unet, "class_embedding", None) is None and getattr(unet, "add_embedding", None) is None
            and getattr(unet, "encoder_hid_proj", None) is None and config.time_cond_proj_dim is None
            and config.addition_embed_type is None and unet.mid_block is not None
            and shallow_skips(unet) >= shallow_reads(unet))


def shallow_reads(unet) -> int:
    """How many skip features the shallow up blocks read: the first ones the shallow down part gives (the last it
    gives, its downsampler's output, is read by the deep up blocks, at full passes)."""
    return sum(len(b.resnets) for b in unet.up_blocks[len(unet.up_blocks) - CACHE_DEPTH:])


def shallow_skips(unet) -> int:
    """How many skip features conv_in and the shallow down blocks give: what the shallow up blocks must read."""
    return 1 + sum(len(b.resnets) + (1 if getattr(b, "downsamplers", None) else 0)
                   for b in unet.down_blocks[:CACHE_DEPTH])


def _call_block(block, hidden, emb, encoder_hidden_states, **kwargs):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states, **kwargs)
    return block(hidden_states=hidden, temb=emb, **kwargs)


@torch.no_grad()
def split_unet(unet, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
               full: torch.Tensor, cached: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise prediction of every row of `sample` (N, C, h, w), and the deep feature of every row.

    `full` (N,) bool says which rows take the full pass; the others reuse their row of `cached` (N, C', h', w'),
    the deep feature of their last full pass (rows of full passes may hold anything there). Returns
    (eps (N, C, h, w), deep (N, C', h', w')): each row's deep feature as computed now or as reused.
    """
    # upsamplers need the skip's size when the latents are not a multiple of their overall factor (diffusers' rule)
    forward_upsample_size = any(dim % 2 ** unet.num_upsamplers for dim in sample.shape[-2:])
    emb, skips = shallow_down(unet, sample, timestep, encoder_hidden_states)

    # deep: only the rows that take a full pass
    at = full.nonzero().flatten()
    if len(at) == len(full):
        deep = deep_part(unet, emb, encoder_hidden_states, skips, forward_upsample_size)
    else:
        deep = cached.clone()
        if len(at):
            rows = deep_part(unet, emb.index_select(0, at), encoder_hidden_states.index_select(0, at),
                             tuple(s.index_select(0, at) for s in skips), forward_upsample_size)
            deep.index_copy_(0, at, rows)
    return shallow_up(unet, deep, emb, encoder_hidden_states, skips[:shallow_reads(unet)], forward_upsample_size), deep


# The three parts below are what the ONNX graphs of the cut are exported from (dreamgen/engines/split_graphs.py),
# so the torch and the compiled cache compute the same thing.
def shallow_down(unet, sample, timestep, encoder_hidden_states) -> tuple[torch.Tensor, tuple]:
    """Every row: (the time embedding (N, E), the skips of conv_in and the first CACHE_DEPTH down blocks). The last
    skip is also the hidden state the deep part starts from."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    if timestep.dim() == 0:
        timestep = timestep[None]
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep.to(sample.device)))
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    hidden = unet.conv_in(sample)
    skips: tuple = (hidden,)
    for block in unet.down_blocks[:CACHE_DEPTH]:
        hidden, res = _call_block(block, hidden, emb, encoder_hidden_states)
        skips += res
    return emb, skips


def shallow_up(unet, deep, emb, encoder_hidden_states, skips, forward_upsample_size) -> torch.Tensor:
    """Every row: the last CACHE_DEPTH up blocks from the deep feature and the first `shallow_reads` skips, then
    conv_out: the noise prediction."""
    n_blocks = len(unet.down_blocks)
    hidden = deep
    for i, block in enumerate(unet.up_blocks[n_blocks - CACHE_DEPTH:], start=n_blocks - CACHE_DEPTH):
        res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < n_blocks - 1 else None
        hidden = _call_block(block, hidden, emb, encoder_hidden_states, res_hidden_states_tuple=res,
                             upsample_size=upsample_size)
    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)


def deep_part(unet, emb, encoder_hidden_states, skips, forward_upsample_size) -> torch.Tensor:
    """The deep part: down blocks below the cut, the mid block, up blocks above it; the feature entering the
    shallow up blocks. `skips` are the shallow down part's: the deep part starts from the last of them, its up
    blocks read the ones after the first `shallow_reads`, and (when forward_upsample_size) the last of its
    upsamplers takes its size from skip `shallow_reads - 1`."""
    n_blocks = len(unet.down_blocks)
    hidden = skips[-1]  # a down block's output is its last skip
    deep_skips: tuple = ()
    for block in unet.down_blocks[CACHE_DEPTH:]:
        hidden, res = _call_block(block, hidden, emb, encoder_hidden_states)
        deep_skips += res
    hidden = _call_block(unet.mid_block, hidden, emb, encoder_hidden_states) if unet.mid_block.has_cross_attention \
        else unet.mid_block(hidden, emb)
    all_skips = skips + deep_skips
    for block in unet.up_blocks[:n_blocks - CACHE_DEPTH]:
        res, all_skips = all_skips[-len(block.resnets):], all_skips[:-len(block.resnets)]
        upsample_size = all_skips[-1].shape[2:] if forward_upsample_size else None
        hidden = _call_block(block, hidden, emb, encoder_hidden_states, res_hidden_states_tuple=res,
                             upsample_size=upsample_size)
    return hidden
