"""Denoising a batch of images from DreamLLM conditions, step for step as diffusers' StableDiffusionPipeline does.

Each image has its own CPU generator seeded with its seed, used for the initial noise and for every stochastic
scheduler step, so one image made here equals the image diffusers makes with
`generator=torch.Generator("cpu").manual_seed(seed)` and the same UNet, VAE, scheduler and embeddings.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..errors import ParamsError

SCHEDULER_CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm-solver": DPMSolverMultistepScheduler}


def make_scheduler(name: str, base_config: dict):
    """A fresh scheduler of the named kind over the model's noise schedule (schedulers are stateful)."""
    return SCHEDULER_CLASSES[name].from_config(base_config)


def max_steps(scheduler_config: dict) -> int:
    """The most denoising steps a schedule allows: past its training timesteps less its offset, ddpm and ddim
    index beyond the schedule's end, and dpm-solver repeats a timestep (its step then divides by zero)."""
    return int(scheduler_config.get("num_train_timesteps", 1000)) - max(int(scheduler_config.get("steps_offset", 0)), 1)


def image_seed(seed: int, index: int) -> int:
    """The seed of a document's image number `index`: the document seed itself for the first image, so a single
    picture reproduces with diffusers alone; a hash for later ones, so seeds 0 and 1 share no pictures."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"dreamgen-image:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")  # issue 15: 32 bits, the seeds A1111-style tools read (was 63)


@dataclass
class ImageRequest:
    """One picture to paint: its condition and everything that decides its pixels."""

    cond: torch.Tensor  # (Q, cross_dim)
    uncond: torch.Tensor  # (Q, cross_dim): unconditional (or negative-prompt) condition
    seed: int
    steps: int
    guidance: float
    scheduler: str
    height: int
    width: int


def group_key(request: ImageRequest) -> tuple:
    # Images share a UNet batch when they walk the same timesteps at the same latent size.
    return (request.steps, request.scheduler, request.height, request.width, request.guidance > 1.0)


def denoise_group(requests: list[ImageRequest], unet: Callable, vae_decode: Callable, scheduler_config: dict,
                  latent_channels: int, vae_scale: int, device, dtype,
                  check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """Paint a group of images that share a group_key; returns (N, 3, H, W) in [0, 1]."""
    first = requests[0]
    # 1. scheduler and timesteps (issue 16: a model's own schedule may allow fewer steps than params.MAX_STEPS)
    if first.steps > max_steps(scheduler_config):
        raise ParamsError(f"steps={first.steps}: this model's noise schedule allows at most "
                          f"{max_steps(scheduler_config)} steps", name="steps")
    scheduler = make_scheduler(first.scheduler, scheduler_config)
    scheduler.set_timesteps(first.steps, device=device)

    # 2. initial noise, one generator per image
    generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
    shape = (len(requests), latent_channels, first.height // vae_scale, first.width // vae_scale)
    latents = randn_tensor(shape, generator=generators, device=torch.device(device), dtype=dtype)
    latents = latents * scheduler.init_noise_sigma

    # 3. conditions: [uncond, cond] as diffusers orders them, guidance per image
    guided = first.guidance > 1.0
    cond = torch.stack([r.cond for r in requests]).to(device=device, dtype=dtype)  # (N, Q, C)
    if guided:
        uncond = torch.stack([r.uncond for r in requests]).to(device=device, dtype=dtype)
        cond = torch.cat([uncond, cond])  # (2N, Q, C)
        scale = torch.tensor([r.guidance for r in requests], device=device, dtype=dtype).view(-1, 1, 1, 1)

    step_kwargs = {}
    accepted = set(inspect.signature(scheduler.step).parameters)
    if "generator" in accepted:
        step_kwargs["generator"] = generators
    if "eta" in accepted:
        step_kwargs["eta"] = 0.0

    # 4. the denoising loop
    for t in scheduler.timesteps:
        if check_cancel:
            check_cancel()
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        eps = unet(model_input, t, cond)
        if guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]

    # 5. decode, one picture at a time: the fp32 VAE at 512 px takes ~0.5 GB a picture, so a batch of 64 would
    # take the KV pool's memory, and a picture's pixels do not depend on what was decoded beside it
    return torch.cat([vae_decode(latents[i:i + 1]) for i in range(len(latents))])
