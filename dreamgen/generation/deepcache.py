"""Reusing the UNet's deep features across neighbouring denoising steps (the DeepCache idea, Ma et al. 2023).

Between two neighbouring steps the UNet's deep features change little, while the shallow skip branches carry the
detail that changes most. So a picture takes a full UNet pass every `cache_interval` steps and keeps the feature
that enters its last up layers; in between, only the shallow part runs: conv_in and the first down layers (the
skips), then the last up layers from the kept feature.

The cut is counted in layers, not blocks: a down layer is a resnet with its attention (or a block's downsampler) and
gives one skip; an up layer is a resnet with its attention (and, at a block's end, its upsampler) and reads one.
SHALLOW_SKIPS = 1 is the shallowest cut: only conv_in and the last up layer run at every step. At a 512-pixel
picture the top level's attention over 4,096 latent pixels is most of a pass, and a cut at the first block's end
would run three of its layers at every step (a cached step cost 0.9 of a full one on the small configuration).

`split_unet` below is diffusers' UNet2DConditionModel.forward cut there, for the plain text-conditioned UNets
dreamgen paints with (SD's block types, no class, addition or image-projection embeddings, no attention masks, no
adapters, no FreeU): `supports_split` says whether a UNet is one. One call serves a batch whose rows are at different
phases: the shallow part runs on every row, the deep part only on the rows that need a full step.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

# How many skips the shallow part makes and reads: conv_in's, and one per down layer after it. Changing it changes
# every cached picture (and the graphs of the cut, whose cache entries key on it).
SHALLOW_SKIPS = 1

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")


def supports_split(unet, cut: int = SHALLOW_SKIPS) -> bool:
    """Whether `split_unet` computes exactly what this UNet's forward does."""
    config = unet.config
    return (all(type(b).__name__ in DOWN_BLOCKS for b in unet.down_blocks)
            and all(type(b).__name__ in UP_BLOCKS and not getattr(b, "s1", None) for b in unet.up_blocks)
            and type(unet.mid_block).__name__ in MID_BLOCKS
            and getattr(unet, "class_embedding", None) is None and getattr(unet, "add_embedding", None) is None
            and getattr(unet, "encoder_hid_proj", None) is None and config.time_cond_proj_dim is None
            and config.addition_embed_type is None
            and len(up_layers(unet)) == len(down_layers(unet)) + 1 and 1 <= cut <= len(down_layers(unet)))


def down_layers(unet) -> list[tuple]:
    """The down path in order, one skip each: (block, i) is resnet i with its attention, (block, None) the block's
    downsampler."""
    layers = []
    for block in unet.down_blocks:
        layers += [(block, i) for i in range(len(block.resnets))]
        if block.downsamplers is not None:
            layers.append((block, None))
    return layers


def up_layers(unet) -> list[tuple]:
    """The up path in order, one skip read each: (block, i) is resnet i with its attention (the block's last also
    runs its upsampler)."""
    return [(block, i) for block in unet.up_blocks for i in range(len(block.resnets))]


class CutLayers(NamedTuple):
    """The down and up layers on each side of a cut, in order."""
    shallow_down: list  # after conv_in, every step: they make skips 1 .. cut-1
    deep_down: list  # full passes only, before the mid block
    deep_up: list  # full passes only, after it
    shallow_up: list  # every step: the last `cut` up layers, reading the shallow skips


def cut_layers(unet, cut: int = SHALLOW_SKIPS) -> CutLayers:
    down, up = down_layers(unet), up_layers(unet)
    return CutLayers(down[:cut - 1], down[cut - 1:], up[:-cut], up[-cut:])


def attends(block) -> bool:
    """Whether a block's layers read the condition (encoder_hidden_states)."""
    return getattr(block, "has_cross_attention", False)


def layers_attend(layers) -> bool:
    """Whether any of these layers reads the condition (a downsampler never does)."""
    return any(attends(block) and i is not None for block, i in layers)


def _down(layers, hidden, emb, condition) -> tuple[torch.Tensor, tuple]:
    """Runs down `layers` from `hidden`: (the last output, the skip each made)."""
    skips: tuple = ()
    for block, i in layers:
        if i is None:
            for downsampler in block.downsamplers:
                hidden = downsampler(hidden)
        else:
            hidden = block.resnets[i](hidden, emb)
            if attends(block):
                hidden = block.attentions[i](hidden, encoder_hidden_states=condition, return_dict=False)[0]
        skips += (hidden,)
    return hidden, skips


def _up(layers, hidden, skips, emb, condition, forward_upsample_size, beside=None):
    """Runs up `layers` from `hidden`, each reading the last of `skips`. An upsampler (diffusers' rule) takes the size
    of the next skip to be read: the last one left, or `beside` when this part has read all its own."""
    for block, i in layers:
        skip, skips = skips[-1], skips[:-1]
        hidden = block.resnets[i](torch.cat([hidden, skip], dim=1), emb)
        if attends(block):
            hidden = block.attentions[i](hidden, encoder_hidden_states=condition, return_dict=False)[0]
        if i == len(block.resnets) - 1 and block.upsamplers is not None:
            following = skips[-1] if skips else beside
            size = following.shape[2:] if forward_upsample_size and following is not None else None
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden, size)
    return hidden


@torch.no_grad()
def split_unet(unet, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
               full: torch.Tensor, cached: torch.Tensor | None,
               cut: int = SHALLOW_SKIPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise prediction of every row of `sample` (N, C, h, w), and the deep feature of every row.

    `full` (N,) bool says which rows take the full pass; the others reuse their row of `cached` (N, C', h', w'),
    the deep feature of their last full pass (rows of full passes may hold anything there). Returns
    (eps (N, C, h, w), deep (N, C', h', w')): each row's deep feature as computed now or as reused.
    """
    # upsamplers need the skip's size when the latents are not a multiple of their overall factor (diffusers' rule)
    forward_upsample_size = any(dim % 2 ** unet.num_upsamplers for dim in sample.shape[-2:])
    emb, skips = shallow_down(unet, sample, timestep, encoder_hidden_states, cut)

    # deep: only the rows that take a full pass
    at = full.nonzero().flatten()
    if len(at) == len(full):
        deep = deep_part(unet, emb, encoder_hidden_states, skips[-1], forward_upsample_size, cut)
    else:
        deep = cached.clone()
        if len(at):
            rows = deep_part(unet, emb.index_select(0, at), encoder_hidden_states.index_select(0, at),
                             skips[-1].index_select(0, at), forward_upsample_size, cut)
            deep.index_copy_(0, at, rows)
    return shallow_up(unet, deep, emb, encoder_hidden_states, skips, forward_upsample_size, cut), deep


# The three parts below are what the ONNX graphs of the cut are exported from (dreamgen/engines/split_graphs.py),
# so the torch and the compiled cache compute the same thing.
def shallow_down(unet, sample, timestep, encoder_hidden_states, cut: int = SHALLOW_SKIPS) -> tuple[torch.Tensor, tuple]:
    """Every row: (the time embedding (N, E), the `cut` skips of conv_in and the first down layers). The last skip is
    also the hidden state the deep part starts from."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    if timestep.dim() == 0:
        timestep = timestep[None]
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep.to(sample.device)))
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    hidden = unet.conv_in(sample)
    _, skips = _down(cut_layers(unet, cut).shallow_down, hidden, emb, encoder_hidden_states)
    return emb, (hidden, *skips)


def deep_part(unet, emb, encoder_hidden_states, start, forward_upsample_size, cut: int = SHALLOW_SKIPS) -> torch.Tensor:
    """The deep part: the down layers below the cut, the mid block, the up layers above it; returns the feature
    entering the shallow up layers. `start` is the shallow part's last skip: the deep part begins from it, and its
    last upsampler (when forward_upsample_size) takes its size, as the first shallow up layer reads it."""
    layers = cut_layers(unet, cut)
    hidden, skips = _down(layers.deep_down, start, emb, encoder_hidden_states)
    if attends(unet.mid_block):
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
    else:
        hidden = unet.mid_block(hidden, emb)
    return _up(layers.deep_up, hidden, skips, emb, encoder_hidden_states, forward_upsample_size, start)


def shallow_up(unet, deep, emb, encoder_hidden_states, skips, forward_upsample_size,
               cut: int = SHALLOW_SKIPS) -> torch.Tensor:
    """Every row: the last `cut` up layers from the deep feature and the shallow skips, then conv_out: the noise
    prediction."""
    hidden = _up(cut_layers(unet, cut).shallow_up, deep, skips, emb, encoder_hidden_states, forward_upsample_size)
    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)
