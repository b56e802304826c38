"""TensorRT optimization profiles: the (min, opt, max) shape of every dynamic input of each graph.

Plain arithmetic on the model's sizes, kept apart from the GPU code so it can be tested anywhere. A profile is
{input name: [min shape, opt shape, max shape]}; TensorRT tunes its kernels for `opt` and accepts anything in range.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import EngineError
from ..model.dreamllm import DreamLLM


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


def unet_profiles(model: DreamLLM, limits: EngineLimits) -> list[dict]:
    lo, opt, hi = latent_range(model, limits)
    unet = model.head.unet.config
    channels, queries, cross = unet.in_channels, model.special.num_dream_queries, unet.cross_attention_dim
    batch = (1, 2, 2 * limits.max_batch)  # 1: one unguided image; 2: one guided image; guidance doubles the batch
    return [{
        "sample": [(batch[0], channels, lo, lo), (batch[1], channels, opt, opt), (batch[2], channels, hi, hi)],
        "timestep": [(b,) for b in batch],  # one per sample
        "encoder_hidden_states": [(b, queries, cross) for b in batch],
    }]


def split_profiles(model: DreamLLM, part: str, limits: EngineLimits) -> list[dict]:
    """A graph of the UNet's cut: the whole UNet's batch and latent range, every skip at its own resolution. The
    deep graph sees a subset of the rows (those at a full pass): one row is its smallest batch too."""
    from .split_graphs import split_io, split_shapes

    lo, opt, hi = latent_range(model, limits)
    unet = model.head.unet.config
    channels, queries, cross = unet.in_channels, model.special.num_dream_queries, unet.cross_attention_dim

    def shapes(batch: int, side: int) -> dict:
        named = split_shapes(model.head.unet, batch, side, side)
        named.update({"sample": (batch, channels, side, side), "timestep": (batch,),
                      "encoder_hidden_states": (batch, queries, cross)})
        return named

    ends = [shapes(b, side) for b, side in zip((1, 2, 2 * limits.max_batch), (lo, opt, hi))]
    return [{name: [end[name] for end in ends] for name in split_io(model, part).inputs}]


def vae_profiles(model: DreamLLM, limits: EngineLimits) -> list[dict]:
    lo, opt, hi = latent_range(model, limits)
    channels = model.head.vae.config.latent_channels
    return [{"latents": [(1, channels, lo, lo), (1, channels, opt, opt), (limits.max_batch, channels, hi, hi)]}]


def vision_profiles(model: DreamLLM, limits: EngineLimits) -> list[dict]:
    size = model.vision.image_size
    return [{"pixel_values": [(1, 3, size, size), (1, 3, size, size), (limits.max_batch, 3, size, size)]}]


def profiles_for(model: DreamLLM, part: str, limits: EngineLimits) -> list[dict]:
    limits.check(model)
    if part.startswith("unet_"):
        return split_profiles(model, part, limits)
    return {"unet": unet_profiles, "vae_decoder": vae_profiles, "vision": vision_profiles}[part](model, limits)


def outside_profile(shapes: dict[str, tuple], profile: dict) -> str | None:
    """Which input falls outside the profile, in words, or None. Inputs the profile does not bound are static."""
    for name, shape in shapes.items():
        if name not in profile:
            continue
        lo, _, hi = profile[name]
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            return f"{name} has shape {tuple(shape)}; the engine takes {tuple(lo)} to {tuple(hi)}"
    return None
