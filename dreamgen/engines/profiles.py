"""TensorRT optimization profiles: the (min, opt, max) shape of every dynamic input of each graph.

Plain arithmetic on the model's sizes, kept apart from the GPU code so it can be tested anywhere. A profile is
{input name: [min shape, opt shape, max shape]}; TensorRT tunes its kernels for `opt` and accepts anything in range.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import EngineError
from ..model.dreamllm import DreamLLM
from .graphs import kv_shape

DECODE_PROFILE, PREFILL_PROFILE = 1, 0


@dataclass(frozen=True)
class EngineLimits:
    """The largest work an engine accepts. Bigger limits cost activation memory, not speed at `opt`."""

    max_batch: int = 4  # documents generated in lockstep (the UNet sees twice as many: guidance doubles it)
    image_size: int | None = None  # largest image side in pixels; None: the model's default size

    def image_side(self, model: DreamLLM) -> int:
        return self.image_size or model.head.default_image_size

    def check(self, model: DreamLLM) -> None:
        factor = model.head.vae_scale_factor
        if self.max_batch < 1:
            raise EngineError(f"max_batch={self.max_batch} must be at least 1")
        if self.image_side(model) % factor:
            raise EngineError(f"image_size={self.image_side(model)} is not a multiple of the VAE factor {factor}")

    def as_dict(self, model: DreamLLM) -> dict:
        return {"max_batch": self.max_batch, "image_size": self.image_side(model)}


def latent_range(model: DreamLLM, limits: EngineLimits) -> tuple[int, int, int]:
    """Latent sides from a quarter of the largest image up to it; tuned for the model's default size."""
    factor = model.head.vae_scale_factor
    largest = limits.image_side(model) // factor
    usual = min(model.head.default_image_size // factor, largest)
    return max(1, largest // 4), usual, largest


def max_cache_length(model: DreamLLM) -> int:
    """The longest KV cache an LM step may be fed. Lockstep documents leave holes in one another's rows until the
    cache is compacted (at half holes), so the cache can reach twice the context length."""
    return 2 * model.max_positions


def unet_profiles(model: DreamLLM, limits: EngineLimits) -> list[dict]:
    lo, opt, hi = latent_range(model, limits)
    unet = model.head.unet.config
    channels, queries, cross = unet.in_channels, model.special.num_dream_queries, unet.cross_attention_dim
    batch = (1, 2, 2 * limits.max_batch)  # 1: one unguided image; 2: one guided image; guidance doubles the batch
    return [{
        "sample": [(batch[0], channels, lo, lo), (batch[1], channels, opt, opt), (batch[2], channels, hi, hi)],
        "timestep": [(1,), (1,), (1,)],
        "encoder_hidden_states": [(b, queries, cross) for b in batch],
    }]


def vae_profiles(model: DreamLLM, limits: EngineLimits) -> list[dict]:
    lo, opt, hi = latent_range(model, limits)
    channels = model.head.vae.config.latent_channels
    return [{"latents": [(1, channels, lo, lo), (1, channels, opt, opt), (limits.max_batch, channels, hi, hi)]}]


def vision_profiles(model: DreamLLM, limits: EngineLimits) -> list[dict]:
    size = model.vision.image_size
    return [{"pixel_values": [(1, 3, size, size), (1, 3, size, size), (limits.max_batch, 3, size, size)]}]


def lm_profiles(model: DreamLLM, limits: EngineLimits) -> list[dict]:
    """Two profiles. Prefill (0): a prompt, a dream block or an image block, on an empty or filled cache.
    Decode (1): one token per document on a cache of any length, the step that runs most."""
    heads, head_dim = kv_shape(model)
    hidden, layers = model.hidden_size, model.llm.config.num_hidden_layers
    b = limits.max_batch
    cache = max_cache_length(model)
    segment = model.special.image_block_len  # the longest segment fed after the prompt
    half = max(1, model.max_positions // 2)

    def profile(seq: tuple, past: tuple) -> dict:
        batches = (1, b, b)
        shapes = {
            "inputs_embeds": [(n, t, hidden) for n, t in zip(batches, seq)],
            "attention_mask": [(n, p + t) for n, p, t in zip(batches, past, seq)],
            "position_ids": [(n, t) for n, t in zip(batches, seq)],
        }
        for i in range(layers):
            for kv in ("key", "value"):
                shapes[f"past.{i}.{kv}"] = [(n, heads, p, head_dim) for n, p in zip(batches, past)]
        return shapes

    # The mask is always past + new long, at min, opt and max alike, so each profile is consistent in itself.
    prefill = profile(seq=(1, min(segment, model.max_positions), model.max_positions), past=(0, 0, cache))
    decode = profile(seq=(1, 1, 1), past=(1, half, cache))
    return [prefill, decode]


def profiles_for(model: DreamLLM, part: str, limits: EngineLimits) -> list[dict]:
    limits.check(model)
    return {"unet": unet_profiles, "vae_decoder": vae_profiles, "vision": vision_profiles,
            "lm_step": lm_profiles}[part](model, limits)


def lm_profile_index(new_positions: int, past_length: int) -> int:
    return DECODE_PROFILE if new_positions == 1 and past_length > 0 else PREFILL_PROFILE


def outside_profile(shapes: dict[str, tuple], profile: dict) -> str | None:
    """Which input falls outside the profile, in words, or None. Inputs the profile does not bound are static."""
    for name, shape in shapes.items():
        if name not in profile:
            continue
        lo, _, hi = profile[name]
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            return f"{name} has shape {tuple(shape)}; the engine takes {tuple(lo)} to {tuple(hi)}"
    return None
