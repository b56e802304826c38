"""The UNet cut at deepcache.SHALLOW_SKIPS as three graphs, so `cache_interval` works on ONNX Runtime and TensorRT:

    unet_shallow_down  sample, timestep (N,), [encoder_hidden_states]           -> emb (N, E), skip_0 ... skip_{k-1}
    unet_deep          emb, [encoder_hidden_states], skip_{k-1}                 -> deep
    unet_shallow_up    deep, emb, [encoder_hidden_states], skip_0 ... skip_{k-1} -> out_sample

k = deepcache.SHALLOW_SKIPS skips come out of conv_in and the shallow down layers; the shallow up layers read all of
them, and the deep part starts from the last (its last upsampler, at latent sides its downsampling does not divide,
takes that skip's size: diffusers' rule, traced that way as the whole UNet graph is). encoder_hidden_states is an
input only of the graphs whose layers attend to it.

Each graph is deepcache's torch code for that part (shallow_down, deep_part, shallow_up), so the torch backend and
the compiled ones compute the same cut. `CompiledSplitUnet` runs the three in deepcache.split_unet's one-call
shape: the shallow graphs on every row, the deep graph only on the rows at a full pass.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..generation import deepcache
from .graph_io import GraphIO, timestep_input

SHALLOW_DOWN, DEEP, SHALLOW_UP = "unet_shallow_down", "unet_deep", "unet_shallow_up"
SPLIT_PARTS = (SHALLOW_DOWN, DEEP, SHALLOW_UP)
CONDITION = "encoder_hidden_states"


def has_split(model) -> bool:
    """Whether this model's UNet can be cut (deepcache.supports_split): then its graphs include SPLIT_PARTS."""
    return deepcache.supports_split(model.head.unet)


def _reads_condition(unet, part: str) -> bool:
    layers = deepcache.cut_layers(unet)
    if part == SHALLOW_DOWN:
        return deepcache.layers_attend(layers.shallow_down)
    if part == DEEP:
        return deepcache.layers_attend(layers.deep_down + layers.deep_up) or deepcache.attends(unet.mid_block)
    return deepcache.layers_attend(layers.shallow_up)


def skip_name(i: int) -> str:
    return f"skip_{i}"


def split_io(model, part: str) -> GraphIO:
    unet = model.head.unet
    condition = (CONDITION,) if _reads_condition(unet, part) else ()
    levels = skip_levels(unet)
    last = skip_name(len(levels) - 1)  # where the deep part starts

    def spatial(level: int) -> dict:
        suffix = "" if level == 0 else f"_{level}"  # equal names: equal sizes (skips at one resolution)
        return {0: "batch", 2: f"height{suffix}", 3: f"width{suffix}"}

    axes = {skip_name(i): spatial(level) for i, level in enumerate(levels)}
    axes.update({"emb": {0: "batch"}, CONDITION: {0: "batch"}, "deep": spatial(levels[-1]),
                 "sample": spatial(0), "timestep": {0: "batch"}, "out_sample": spatial(0)})
    if part == SHALLOW_DOWN:
        inputs, outputs = ("sample", "timestep", *condition), ("emb", *(skip_name(i) for i in range(len(levels))))
    elif part == DEEP:
        inputs, outputs = ("emb", *condition, last), ("deep",)
    elif part == SHALLOW_UP:
        inputs, outputs = ("deep", "emb", *condition, *(skip_name(i) for i in range(len(levels)))), ("out_sample",)
    else:
        raise ValueError(f"unknown split part {part!r}: use one of {', '.join(SPLIT_PARTS)}")
    return GraphIO(inputs, outputs, {name: axes[name] for name in inputs + outputs})


# ------------------------------------------------------------------------------------------------ shapes
def skip_levels(unet) -> list[int]:
    """How many times each shallow skip has been downsampled."""
    levels = [0]
    for _, i in deepcache.cut_layers(unet).shallow_down:
        levels.append(levels[-1] + (i is None))
    return levels


def _downsampled(downsampler, side: int) -> int:
    """A side after one of diffusers' Downsample2D: a strided conv (padded by one on the far side when its padding
    is 0), or an average pool."""
    op = downsampler.conv
    if isinstance(op, nn.Conv2d):
        k, s, p, d = op.kernel_size[0], op.stride[0], op.padding[0], op.dilation[0]
        if getattr(downsampler, "use_conv", True) and getattr(downsampler, "padding", 1) == 0:
            side += 1
        return (side + 2 * p - d * (k - 1) - 1) // s + 1
    k, s = (op.kernel_size, op.stride) if isinstance(op.kernel_size, int) else (op.kernel_size[0], op.stride[0])
    return (side - k) // s + 1


def split_shapes(unet, batch: int, height: int, width: int) -> dict[str, tuple]:
    """The shape of every tensor passed between the three graphs for `batch` rows of latents height x width:
    emb, skip_i and deep (ONNX Runtime is given its outputs' shapes up front)."""
    shapes = {"emb": (batch, unet.time_embedding.linear_2.out_features)}
    h, w = height, width
    skips = [(batch, unet.conv_in.out_channels, h, w)]
    layers = deepcache.cut_layers(unet)
    for block, i in layers.shallow_down:
        if i is None:
            for downsampler in block.downsamplers:
                h, w = _downsampled(downsampler, h), _downsampled(downsampler, w)
            skips.append((batch, block.downsamplers[-1].out_channels, h, w))
        else:
            skips.append((batch, block.resnets[i].out_channels, h, w))
    shapes.update({skip_name(i): shape for i, shape in enumerate(skips)})
    block, i = layers.shallow_up[0]  # the first shallow up layer: deep beside the last skip
    shapes["deep"] = (batch, block.resnets[i].in_channels - skips[-1][1], *skips[-1][2:])
    return shapes


def split_sample_inputs(model, part: str, dtype: torch.dtype, batch: int, side: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs of one split graph, in `split_io` order: the tracing example and verify's probes."""
    unet = model.head.unet
    shapes = split_shapes(unet, batch, side, side)
    shapes.update({"sample": (batch, unet.config.in_channels, side, side),
                   CONDITION: (batch, model.special.num_dream_queries, unet.config.cross_attention_dim)})
    inputs = []
    for name in split_io(model, part).inputs:
        if name == "timestep":
            inputs.append(torch.linspace(501.0, 901.0, batch))  # fp32 in every precision, one per sample
        else:
            inputs.append(torch.randn(*shapes[name], generator=generator).to(dtype))
    return tuple(inputs)


# ------------------------------------------------------------------------------------------------ export
class SplitPartGraph(nn.Module):
    """One part of the cut as a module of named positional inputs (split_io's order)."""

    def __init__(self, unet, part: str, inputs: tuple[str, ...]):
        super().__init__()
        self.unet, self.part, self.inputs = unet, part, inputs

    def forward(self, *tensors):
        unet = self.unet
        given = dict(zip(self.inputs, tensors))
        condition = given.get(CONDITION)
        if self.part == SHALLOW_DOWN:
            emb, skips = deepcache.shallow_down(unet, given["sample"], given["timestep"], condition)
            return (emb, *skips)
        # Traced at a latent side the downsampling does not divide (graphs.export_latent_size): upsamplers take
        # their skip's size, which is also exact at every other side.
        if self.part == DEEP:
            start = given[skip_name(deepcache.SHALLOW_SKIPS - 1)]
            return deepcache.deep_part(unet, given["emb"], condition, start, forward_upsample_size=True)
        skips = tuple(given[skip_name(i)] for i in range(deepcache.SHALLOW_SKIPS))
        return deepcache.shallow_up(unet, given["deep"], given["emb"], condition, skips, forward_upsample_size=True)


# ------------------------------------------------------------------------------------------------ running
# run(part, feeds, output_shapes) -> {output name: tensor}: one graph of the cut on a backend (an ONNX Runtime
# session, a TensorRT engine); output_shapes are what it will return, for runtimes that want them up front.
RunPart = Callable[[str, dict, dict], dict]


class CompiledSplitUnet:
    """deepcache.split_unet's interface (Components.split_unet) on the three compiled graphs of the cut: one call a
    step serves rows at different phases; the shallow graphs run on every row, the deep graph only on the rows at a
    full pass. Deep features are kept in the graphs' dtype on their device, as they come out."""

    def __init__(self, model, run: RunPart, device: torch.device):
        self.unet = model.head.unet
        self.run = run
        self.device = device
        self.io = {part: split_io(model, part) for part in SPLIT_PARTS}

    def _run(self, part: str, available: dict, shapes: dict) -> dict:
        io = self.io[part]
        feeds = {name: available[name] for name in io.inputs}
        return self.run(part, feeds, {name: shapes[name] for name in io.outputs})

    @torch.no_grad()
    def __call__(self, sample, timestep, encoder_hidden_states, full, cached):
        n, _, h, w = sample.shape
        available = {"sample": sample, "timestep": timestep_input(timestep, n, self.device),
                     CONDITION: encoder_hidden_states}
        shapes = split_shapes(self.unet, n, h, w)
        shapes["out_sample"] = tuple(sample.shape)
        available.update(self._run(SHALLOW_DOWN, available, shapes))

        at = full.to(self.device).nonzero().flatten()
        if len(at) == n:
            deep = self._run(DEEP, available, shapes)["deep"]
        else:
            deep = cached.to(self.device, copy=True)  # the rows that reuse keep theirs; the caller keeps `cached`
            if len(at):
                subset = {name: available[name].index_select(0, at.to(available[name].device))
                          for name in self.io[DEEP].inputs}
                rows = self._run(DEEP, subset, split_shapes(self.unet, len(at), h, w))["deep"]
                deep = deep.to(rows.dtype).index_copy_(0, at.to(rows.device), rows)
        available["deep"] = deep
        eps = self._run(SHALLOW_UP, available, shapes)["out_sample"]
        return eps.to(device=sample.device, dtype=sample.dtype), deep
