"""The three graphs of DreamLLM's picture side, each a small torch module with named, plainly shaped inputs.

    unet          sample (N, 4, h, w), timestep (N,) fp32, encoder_hidden_states (N, Q, C)    -> out_sample
    vae_decoder   latents (N, 4, h, w), scaled as the scheduler leaves them                    -> images in [0, 1]
    vision        pixel_values (N, 3, S, S), CLIP-normalised                                    -> image_features (N, P, H)

A UNet that deepcache can cut also gets the three graphs of its cut (split_graphs.py: SPLIT_PARTS), so
`cache_interval` works on the compiled backends too; `model_parts` names a model's graphs.

The same graphs feed ONNX Runtime and TensorRT, but for the UNet's attention (see FLAVORS). The LM is not among
them: it runs on torch on every backend, over the paged KV pool (dreamgen/generation/runner.py). Dream queries,
the condition projector and CLIP's resize stay in torch too: they are cheap.
"""
from __future__ import annotations

import contextlib
import copy
import logging

import torch
from torch import nn

from ..model.dreamllm import DreamLLM
from .fused_attention import fused_attention
from .graph_io import GraphIO, timestep_input  # noqa: F401 (re-exported: the backends take them from here)

PARTS = ("unet", "vae_decoder", "vision")
from ..settings import PRECISIONS  # noqa: F401 (re-exported: the graphs come in these precisions)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# onnxruntime: the UNet's attention as ONNX Runtime's fused MultiHeadAttention op (fused_attention.py);
# portable: standard ONNX ops only, for TensorRT. The other parts are the same graph in both.
FLAVORS = ("onnxruntime", "portable")


def part_precision(part: str, precision: str) -> str:
    """The precision a part is built in: the VAE stays fp32 whatever is asked (it overflows in fp16)."""
    return "fp32" if part == "vae_decoder" else precision


def part_flavor(part: str, flavor: str) -> str:
    """Only the UNet (whole or cut) has an ONNX Runtime flavour; one portable graph of every other part serves both
    backends."""
    return flavor if is_unet_part(part) else "portable"


def is_unet_part(part: str) -> bool:
    return part == "unet" or part.startswith("unet_")


def model_parts(model: DreamLLM) -> tuple[str, ...]:
    """The graphs a model is exported as: PARTS, and the UNet's cut where deepcache can cut it."""
    from .split_graphs import SPLIT_PARTS, has_split

    return PARTS + SPLIT_PARTS if has_split(model) else PARTS


# ------------------------------------------------------------------------------------------------ wrappers
class UNetGraph(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VaeDecoderGraph(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        images = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)


class VisionGraph(nn.Module):
    def __init__(self, vision):
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values):
        return self.vision(pixel_values)


# ------------------------------------------------------------------------------------------------ per part


def graph_io(model: DreamLLM, part: str) -> GraphIO:
    from .split_graphs import SPLIT_PARTS, split_io

    if part in SPLIT_PARTS:
        return split_io(model, part)
    if part == "unet":
        image = {0: "batch", 2: "height", 3: "width"}
        return GraphIO(("sample", "timestep", "encoder_hidden_states"), ("out_sample",),
                       {"sample": image, "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch"},
                        "out_sample": image})
    if part == "vae_decoder":
        return GraphIO(("latents",), ("images",), {"latents": {0: "batch", 2: "height", 3: "width"},
                                                   "images": {0: "batch", 2: "pixel_height", 3: "pixel_width"}})
    if part == "vision":
        return GraphIO(("pixel_values",), ("image_features",),
                       {"pixel_values": {0: "batch"}, "image_features": {0: "batch"}})
    raise ValueError(f"unknown graph part {part!r}: use one of {', '.join(PARTS)}")


def unet_downsamples(model: DreamLLM) -> int:
    return 2 ** (len(model.head.unet.config.block_out_channels) - 1)


def export_latent_size(model: DreamLLM) -> int:
    """A latent side NOT divisible by the UNet's total downsampling. diffusers checks that divisibility in Python;
    traced at a divisible size, the check is frozen as 'divisible' and the graph breaks at every other size."""
    size, factor = model.head.unet.config.sample_size, unet_downsamples(model)
    return size if factor == 1 or size % factor else size + 1


def sample_inputs(model: DreamLLM, part: str, precision: str, batch: int = 2, latent: int | None = None,
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs in the graph's dtype, on CPU: the tracing example for export, and the probes of `verify`."""
    dtype = TORCH_DTYPES[part_precision(part, precision)]
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    from .split_graphs import SPLIT_PARTS, split_sample_inputs

    if part in SPLIT_PARTS:
        return split_sample_inputs(model, part, dtype, batch, latent or export_latent_size(model), g)
    if part == "unet":
        unet = model.head.unet
        side = latent or export_latent_size(model)
        timesteps = torch.linspace(501.0, 901.0, batch)  # one per sample, and not all equal
        return (randn(batch, unet.config.in_channels, side, side), timesteps,
                randn(batch, model.special.num_dream_queries, unet.config.cross_attention_dim))
    if part == "vae_decoder":
        side = latent or export_latent_size(model)
        return (randn(batch, model.head.vae.config.latent_channels, side, side),)
    if part == "vision":
        size = model.vision.image_size
        return (randn(batch, 3, size, size),)
    raise ValueError(f"unknown graph part {part!r}: use one of {', '.join(PARTS)}")


@contextlib.contextmanager
def graph_module(model: DreamLLM, part: str, precision: str, flavor: str = "portable"):
    """The wrapper module of `part` in the graph's precision, on the model's device. The model's own weights are
    used when their dtype already matches; otherwise a converted copy (an fp16 graph carries fp16 weights and
    fp16 inputs and outputs: the precision lives in the graph, as TensorRT's strongly typed networks want)."""
    dtype = TORCH_DTYPES[part_precision(part, precision)]
    from .split_graphs import SPLIT_PARTS, SplitPartGraph

    source = model.head.unet if part in SPLIT_PARTS else \
        {"unet": model.head.unet, "vae_decoder": model.head.vae, "vision": model.vision}[part]
    if next(source.parameters()).dtype == dtype:
        module = source
    else:
        with _quiet("diffusers"):  # it warns on every .to(fp16) of a UNet; the graph is meant to be all fp16
            module = copy.deepcopy(source).to(dtype)
    fused = part_flavor(part, flavor) == "onnxruntime"
    with fused_attention(module) if fused else contextlib.nullcontext():
        if part in SPLIT_PARTS:
            yield SplitPartGraph(module, part, graph_io(model, part).inputs).eval()
        else:
            yield {"unet": UNetGraph, "vae_decoder": VaeDecoderGraph, "vision": VisionGraph}[part](module).eval()


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)
