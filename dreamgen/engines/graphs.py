"""The four graphs DreamLLM is compiled into, each a small torch module with named, plainly shaped inputs.

    unet          sample (2B, 4, h, w), timestep (1,) fp32, encoder_hidden_states (2B, Q, C)  -> out_sample
    vae_decoder   latents (N, 4, h, w), scaled as the scheduler leaves them                    -> images in [0, 1]
    vision        pixel_values (N, 3, S, S), CLIP-normalised                                    -> image_features (N, P, H)
    lm_step       inputs_embeds (B, T, H), attention_mask (B, L+T), position_ids (B, T),
                  past.{i}.key / past.{i}.value (B, heads, L, d)
                  -> logits_last (B, V) fp32, last_hidden_state (B, T, H), present.{i}.key / .value (B, heads, L+T, d)

The same graphs feed ONNX Runtime and TensorRT, but for the UNet's attention (see FLAVORS). Token embeddings, dream
queries, the condition projector and CLIP's resize stay in torch: they are cheap, and images and queries enter the
LM step as embeddings.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..model.dreamllm import DreamLLM
from ..model.llama_cache import cache_argument
from .fused_attention import fused_attention

PARTS = ("unet", "vae_decoder", "vision", "lm_step")
from ..settings import PRECISIONS  # noqa: F401 (re-exported: the graphs come in these precisions)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# onnxruntime: the UNet's attention as ONNX Runtime's fused MultiHeadAttention op (fused_attention.py);
# portable: standard ONNX ops only, for TensorRT. The other parts are the same graph in both.
FLAVORS = ("onnxruntime", "portable")


def part_precision(part: str, precision: str) -> str:
    """The precision a part is built in: the VAE stays fp32 whatever is asked (it overflows in fp16)."""
    return "fp32" if part == "vae_decoder" else precision


def part_flavor(part: str, flavor: str) -> str:
    """Only the UNet has an ONNX Runtime flavour; one portable graph of every other part serves both backends."""
    return flavor if part == "unet" else "portable"


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict  # name -> {axis: symbolic name}; equal names tell the runtime the sizes are equal


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


class _ConcatCache:
    """Just the part of transformers' Cache that an attention layer calls: append this step's keys and values to
    the past ones and keep the result as the step's `present`. Plain tensors in, plain tensors out."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]):
        self.past = past
        self.present: list = [None] * len(past)

    def update(self, key, value, layer_idx, *args, **kwargs):
        past_key, past_value = self.past[layer_idx]
        key, value = torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2)
        self.present[layer_idx] = (key, value)
        return key, value


class LMStepGraph(nn.Module):
    """One forward of the LLaMA decoder over T new positions on a cache of L: prefill (L = 0, fed a zero-length
    past), a segment (dream or image block) or one decoded token. Runs the transformers decoder layers themselves;
    only the mask is built here, so that no shape-dependent shortcut of transformers' mask code is frozen into the
    traced graph."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm

    def forward(self, inputs_embeds, attention_mask, position_ids, *past_flat):
        model = self.llm.model
        past = [(past_flat[i], past_flat[i + 1]) for i in range(0, len(past_flat), 2)]
        mask = step_attention_mask(attention_mask, inputs_embeds.shape[1], inputs_embeds.dtype)
        cache = _ConcatCache(past)
        hidden = inputs_embeds
        position_embeddings = model.rotary_emb(hidden, position_ids=position_ids)
        for layer in model.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                           position_ids=position_ids, use_cache=True, **cache_argument(cache))
        hidden = model.norm(hidden)  # post-norm states: the dream queries' condition is read from them
        logits = self.llm.lm_head(hidden[:, -1]).float()  # (B, V): only the last position is ever sampled
        outputs = [logits, hidden]
        for key, value in cache.present:
            outputs += [key, value]
        return tuple(outputs)


def step_attention_mask(attention_mask: torch.Tensor, new: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, L+T) 0/1 mask over cache + new positions -> additive (B, 1, T, L+T) mask: causal over the new positions,
    pads hidden. Each position always sees itself, so a pad row is never fully masked: a fully masked row would
    make NaNs in fp16 that the cache then carries into every later step."""
    total = attention_mask.shape[1]
    key_index = torch.cumsum(torch.ones_like(attention_mask), dim=-1) - 1  # (B, L+T): 0 .. L+T-1
    query_index = key_index[:, total - new:]  # (B, T)
    causal = key_index[:, None, :] <= query_index[:, :, None]  # (B, T, L+T)
    allowed = (causal & attention_mask[:, None, :].bool()) | (key_index[:, None, :] == query_index[:, :, None])
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, blocked)[:, None]  # (B, 1, T, L+T)


# ------------------------------------------------------------------------------------------------ per part
def timestep_input(timestep, device: torch.device) -> torch.Tensor:
    """The scheduler's timestep (a 0-d integer tensor) as the graphs take it: shape (1,), fp32 in every precision."""
    timestep = torch.as_tensor(timestep)
    if timestep.numel() != 1:
        raise ValueError(f"timestep must hold one value (the whole batch is at one step), got shape "
                         f"{tuple(timestep.shape)}")
    return timestep.reshape(1).to(device=device, dtype=torch.float32)


def graph_io(model: DreamLLM, part: str) -> GraphIO:
    if part == "unet":
        image = {0: "batch", 2: "height", 3: "width"}
        return GraphIO(("sample", "timestep", "encoder_hidden_states"), ("out_sample",),
                       {"sample": image, "encoder_hidden_states": {0: "batch"}, "out_sample": image})
    if part == "vae_decoder":
        return GraphIO(("latents",), ("images",), {"latents": {0: "batch", 2: "height", 3: "width"},
                                                   "images": {0: "batch", 2: "pixel_height", 3: "pixel_width"}})
    if part == "vision":
        return GraphIO(("pixel_values",), ("image_features",),
                       {"pixel_values": {0: "batch"}, "image_features": {0: "batch"}})
    if part == "lm_step":
        layers = range(model.llm.config.num_hidden_layers)
        past = tuple(f"past.{i}.{kv}" for i in layers for kv in ("key", "value"))
        present = tuple(f"present.{i}.{kv}" for i in layers for kv in ("key", "value"))
        axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
                "position_ids": {0: "batch", 1: "sequence"}, "logits_last": {0: "batch"},
                "last_hidden_state": {0: "batch", 1: "sequence"}}
        axes.update({name: {0: "batch", 2: "past"} for name in past})
        axes.update({name: {0: "batch", 2: "total"} for name in present})
        return GraphIO(("inputs_embeds", "attention_mask", "position_ids") + past,
                       ("logits_last", "last_hidden_state") + present, axes)
    raise ValueError(f"unknown graph part {part!r}: use one of {', '.join(PARTS)}")


def kv_shape(model: DreamLLM) -> tuple[int, int]:
    """(key/value heads, head dim) of the LLM's cache."""
    cfg = model.llm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_key_value_heads, head_dim


def unet_downsamples(model: DreamLLM) -> int:
    return 2 ** (len(model.head.unet.config.block_out_channels) - 1)


def export_latent_size(model: DreamLLM) -> int:
    """A latent side NOT divisible by the UNet's total downsampling. diffusers checks that divisibility in Python;
    traced at a divisible size, the check is frozen as 'divisible' and the graph breaks at every other size."""
    size, factor = model.head.unet.config.sample_size, unet_downsamples(model)
    return size if factor == 1 or size % factor else size + 1


def sample_inputs(model: DreamLLM, part: str, precision: str, batch: int = 2, latent: int | None = None,
                  sequence: int = 3, past: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs in the graph's dtype, on CPU: the tracing example for export, and the probes of `verify`."""
    dtype = TORCH_DTYPES[part_precision(part, precision)]
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    if part == "unet":
        unet = model.head.unet
        side = latent or export_latent_size(model)
        return (randn(batch, unet.config.in_channels, side, side), torch.tensor([501.0]),
                randn(batch, model.special.num_dream_queries, unet.config.cross_attention_dim))
    if part == "vae_decoder":
        side = latent or export_latent_size(model)
        return (randn(batch, model.head.vae.config.latent_channels, side, side),)
    if part == "vision":
        size = model.vision.image_size
        return (randn(batch, 3, size, size),)
    if part == "lm_step":
        heads, head_dim = kv_shape(model)
        embeds = randn(batch, sequence, model.hidden_size)
        mask = torch.ones(batch, past + sequence, dtype=torch.long)
        positions = torch.arange(past, past + sequence).expand(batch, -1).contiguous()
        cache = [randn(batch, heads, past, head_dim) for _ in range(2 * model.llm.config.num_hidden_layers)]
        return (embeds, mask, positions, *cache)
    raise ValueError(f"unknown graph part {part!r}: use one of {', '.join(PARTS)}")


@contextlib.contextmanager
def graph_module(model: DreamLLM, part: str, precision: str, flavor: str = "portable"):
    """The wrapper module of `part` in the graph's precision, on the model's device. The model's own weights are
    used when their dtype already matches; otherwise a converted copy (an fp16 graph carries fp16 weights and
    fp16 inputs and outputs: the precision lives in the graph, as TensorRT's strongly typed networks want)."""
    dtype = TORCH_DTYPES[part_precision(part, precision)]
    source = {"unet": model.head.unet, "vae_decoder": model.head.vae, "vision": model.vision,
              "lm_step": model.llm}[part]
    if next(source.parameters()).dtype == dtype:
        module = source
    else:
        with _quiet("diffusers"):  # it warns on every .to(fp16) of a UNet; the graph is meant to be all fp16
            module = copy.deepcopy(source).to(dtype)
    wrapper = {"unet": UNetGraph, "vae_decoder": VaeDecoderGraph, "vision": VisionGraph, "lm_step": LMStepGraph}[part]
    fused = part_flavor(part, flavor) == "onnxruntime"
    with _eager_attention(module if part == "lm_step" else None), \
            (fused_attention(module) if fused else contextlib.nullcontext()):
        yield wrapper(module).eval()


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def _eager_attention(llm):
    """Trace the LLM with transformers' eager attention: plain MatMul/Softmax that every runtime takes, with the
    softmax in fp32 even in an fp16 graph. Restored afterwards (the config may be the live model's)."""
    if llm is None:
        yield
        return
    before = llm.config._attn_implementation
    llm.config._attn_implementation = "eager"
    try:
        yield
    finally:
        llm.config._attn_implementation = before
