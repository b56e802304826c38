"""Denoising a batch of images from DreamLLM conditions, step for step as diffusers' StableDiffusionPipeline does.

Each image has its own CPU generator seeded with its seed, used for the initial noise and for every stochastic
scheduler step, so one image made here equals the image diffusers makes with
`generator=torch.Generator("cpu").manual_seed(seed)` and the same UNet, VAE, scheduler and embeddings. The noise is
drawn ahead, all of it, in the order diffusers draws it (the initial latents, then one draw per DDPM step with
t > 0), and moved to the device once: no step waits on a CPU generator or a host-to-device copy.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

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


VAE_BATCH = 4  # pictures decoded at once: the fp32 VAE at 512 px takes ~0.5 GB a picture


def draw_noise(seeds: list[int], shape: tuple, steps: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(initial latents (N, *shape), step noise (steps, N, *shape)) from one CPU generator per picture, each
    drawing its initial latents and then its `steps` step noises, as diffusers' randn_tensor does with a list of
    generators; moved to the device in one copy."""
    initial, noise = [], []
    for seed in seeds:
        generator = torch.Generator("cpu").manual_seed(seed)
        initial.append(torch.randn(shape, generator=generator, dtype=dtype))
        noise.append(torch.stack([torch.randn(shape, generator=generator, dtype=dtype) for _ in range(steps)])
                     if steps else torch.zeros(0, *shape, dtype=dtype))
    both = torch.cat([torch.stack(initial)[None], torch.stack(noise, dim=1)])  # (1 + steps, N, *shape)
    if torch.device(device).type == "cuda":
        both = both.pin_memory()
    both = both.to(device, non_blocking=True)
    return both[0], both[1:]


def ddpm_step(scheduler, eps: torch.Tensor, t, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """DDPMScheduler.step's arithmetic with the variance noise given (drawn ahead) instead of drawn here."""
    config = scheduler.config
    prev_t = scheduler.previous_timestep(t)
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_t_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.one
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    if config.prediction_type == "epsilon":
        original = (sample - beta_prod_t ** 0.5 * eps) / alpha_prod_t ** 0.5
    elif config.prediction_type == "v_prediction":
        original = alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * eps
    else:
        original = eps  # "sample"
    if config.clip_sample:
        original = original.clamp(-config.clip_sample_range, config.clip_sample_range)
    previous = ((alpha_prod_t_prev ** 0.5 * current_beta_t) / beta_prod_t * original
                + current_alpha_t ** 0.5 * beta_prod_t_prev / beta_prod_t * sample)
    if t > 0 and noise is not None:
        previous = previous + scheduler._get_variance(t) ** 0.5 * noise
    return previous


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

    # 2. all the noise, drawn ahead: one generator per image (DDPM also draws once per step with t > 0)
    ddpm = isinstance(scheduler, DDPMScheduler) and scheduler.config.variance_type in ("fixed_small", None)
    noisy_steps = int((scheduler.timesteps > 0).sum()) if ddpm else 0
    shape = (latent_channels, first.height // vae_scale, first.width // vae_scale)
    latents, step_noise = draw_noise([r.seed for r in requests], shape, noisy_steps, device, dtype)
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
    if "generator" in accepted and not ddpm:  # a scheduler that draws noise of its own (none of ours does)
        step_kwargs["generator"] = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
    if "eta" in accepted:
        step_kwargs["eta"] = 0.0

    # 4. the denoising loop
    for k, t in enumerate(scheduler.timesteps):
        if check_cancel:
            check_cancel()
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        eps = unet(model_input, t, cond)
        if guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + scale * (eps_cond - eps_uncond)
        if ddpm:
            latents = ddpm_step(scheduler, eps, t, latents, step_noise[k] if k < noisy_steps else None)
        else:
            latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]

    # 5. decode, VAE_BATCH pictures at a time: a batch of 64 at 512 px would take the KV pool's memory
    return torch.cat([vae_decode(latents[i:i + VAE_BATCH]) for i in range(0, len(latents), VAE_BATCH)])
