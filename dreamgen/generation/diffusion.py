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
import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ..errors import ParamsError

log = logging.getLogger(__name__)

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
    cache_interval: int = 1  # a full UNet pass every this many steps, the deep features reused between (deepcache.py)
    cache_until: float = 1.0  # the reuse stops after this share of the steps: full passes after
    guidance_until: float = 1.0  # guided through this share of the steps, unguided (one UNet row) after


def steps_in(share: float, steps: int) -> int:
    """How many of `steps` steps, from the first, a share (0, 1] covers: at least one, rounded up, so 0.6 of 25 is
    15 (not the 16 that 0.6 * 25 = 15.000000000000002 would round up to)."""
    return max(1, math.ceil(round(share * steps, 9)))


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


@dataclass
class Picture:
    """One picture being painted: its own scheduler (and its state), latents and noise drawn ahead, its step."""

    request: ImageRequest
    scheduler: object
    latents: torch.Tensor  # (1, C, h, w), fp32
    noise: torch.Tensor | None  # (noisy steps, 1, C, h, w), fp32: DDPM's per-step draws; None for the others
    step_kwargs: dict
    unet_dtype: torch.dtype = torch.float32  # what the UNet reads (bf16 on CUDA); everything else here is fp32
    step: int = 0
    deep: torch.Tensor | None = None  # (rows, C, h, w): the deep feature of its last full pass, rows [uncond?, cond]

    @property
    def done(self) -> bool:
        return self.step >= len(self.scheduler.timesteps)

    @property
    def timestep(self) -> torch.Tensor:
        return self.scheduler.timesteps[self.step]

    @property
    def guided(self) -> bool:
        """Whether this step runs the unconditional row too: from the first step through guidance_until of them."""
        return self.request.guidance > 1.0 and self.step < steps_in(self.request.guidance_until,
                                                                     len(self.scheduler.timesteps))

    @property
    def cached(self) -> bool:
        return self.request.cache_interval > 1

    @property
    def full_pass(self) -> bool:
        """Whether this step runs the whole UNet: always without the cache; with it, every cache_interval-th step
        and every step after cache_until of them."""
        return (self.deep is None or self.step % self.request.cache_interval == 0
                or self.step >= steps_in(self.request.cache_until, len(self.scheduler.timesteps)))


def start_picture(request: ImageRequest, scheduler_config: dict, latent_channels: int, vae_scale: int, device,
                  dtype) -> Picture:
    """A picture at its first step: a fresh scheduler of its kind over the model's noise schedule, and all its
    noise drawn from its own CPU generator (as diffusers' pipeline draws it for this seed). The latents, the noise,
    the scheduler's arithmetic and the guidance mix are fp32 whatever the UNet's `dtype` (as the reference samples:
    only the UNet and the LM run in bf16)."""
    # issue 16: a model's own schedule may allow fewer steps than params.MAX_STEPS
    if request.steps > max_steps(scheduler_config):
        raise ParamsError(f"steps={request.steps}: this model's noise schedule allows at most "
                          f"{max_steps(scheduler_config)} steps", name="steps")
    scheduler = make_scheduler(request.scheduler, scheduler_config)
    scheduler.set_timesteps(request.steps, device=device)
    ddpm = isinstance(scheduler, DDPMScheduler) and scheduler.config.variance_type in ("fixed_small", None)
    noisy_steps = int((scheduler.timesteps > 0).sum()) if ddpm else 0
    shape = (latent_channels, request.height // vae_scale, request.width // vae_scale)
    latents, noise = draw_noise([request.seed], shape, noisy_steps, device, torch.float32)
    step_kwargs = {}
    accepted = set(inspect.signature(scheduler.step).parameters)
    if "generator" in accepted and not ddpm:  # a scheduler that draws noise of its own (none of ours does):
        generator = torch.Generator("cpu").manual_seed(request.seed)  # its stream after the initial latents
        torch.randn(shape, generator=generator, dtype=torch.float32)
        step_kwargs["generator"] = generator
    if "eta" in accepted:
        step_kwargs["eta"] = 0.0
    return Picture(request, scheduler, latents * scheduler.init_noise_sigma, noise if ddpm else None, step_kwargs,
                   unet_dtype=dtype)


def denoise_step(pictures: list[Picture], unet: Callable, split_unet: Callable | None = None) -> None:
    """One denoising step for every picture (all of one latent size), each at its own timestep with its own
    scheduler, in one UNet call: rows [unconditional of the guided pictures, conditional of all], as diffusers
    orders them for one picture.

    Pictures with a cache interval go through `split_unet` (deepcache.split_unet's signature, less the UNet), the
    deep part only for the rows of pictures at a full pass, in the same one call; without `split_unet` (a UNet
    deepcache cannot cut, or compiled engines built without the cut's graphs) they take full steps."""
    device, dtype = pictures[0].latents.device, pictures[0].unet_dtype
    inputs = [p.scheduler.scale_model_input(p.latents, p.timestep).to(dtype) for p in pictures]
    guided = [i for i, p in enumerate(pictures) if p.guided]
    rows = [inputs[i] for i in guided] + inputs
    timesteps = torch.stack([pictures[i].timestep for i in guided] + [p.timestep for p in pictures])
    cond = torch.stack([pictures[i].request.uncond for i in guided] + [p.request.cond for p in pictures])
    caching = any(p.cached for p in pictures)
    if caching and split_unet is None:
        _warn_no_split()
    if caching and split_unet is not None:
        eps = _split_step(pictures, guided, torch.cat(rows), timesteps.to(device),
                          cond.to(device=device, dtype=dtype), split_unet)
    else:
        eps = unet(torch.cat(rows), timesteps.to(device), cond.to(device=device, dtype=dtype))
    eps = eps.float()  # the guidance mix and the scheduler in fp32
    eps_uncond, eps_cond = eps[:len(guided)], eps[len(guided):]
    if guided:
        scale = torch.tensor([pictures[i].request.guidance for i in guided], device=device, dtype=torch.float32)
        at = torch.tensor(guided, device=device)
        u, c = eps_uncond, eps_cond.index_select(0, at)
        eps_cond = eps_cond.index_copy(0, at, u + scale.view(-1, 1, 1, 1) * (c - u))
    for k, p in enumerate(pictures):
        e = eps_cond[k:k + 1]
        if p.noise is not None:
            p.latents = ddpm_step(p.scheduler, e, p.timestep, p.latents,
                                  p.noise[p.step] if p.step < len(p.noise) else None)
        else:
            p.latents = p.scheduler.step(e, p.timestep, p.latents, **p.step_kwargs, return_dict=False)[0]
        p.step += 1


def _split_step(pictures: list[Picture], guided: list[int], sample, timesteps, cond, split_unet) -> torch.Tensor:
    """The UNet's noise prediction of the rows, the deep part computed only for pictures at a full pass; each
    cached picture keeps its rows' deep feature."""
    owner = guided + list(range(len(pictures)))  # the picture of each row
    full = torch.tensor([pictures[i].full_pass for i in owner], device=sample.device)
    cached = None
    if not bool(full.all()):
        like = next(p.deep for p in pictures if p.deep is not None)
        # a guided picture's rows are [uncond, cond]: its uncond row is deep[0], its cond row deep[-1]
        cached = torch.cat([(pictures[i].deep[:1] if pictures[i].deep is not None else torch.zeros_like(like[:1]))
                            for i in guided]
                           + [(p.deep[-1:] if p.deep is not None else torch.zeros_like(like[:1])) for p in pictures])
    eps, deep = split_unet(sample, timesteps, cond, full, cached)
    n_guided = len(guided)
    for k, p in enumerate(pictures):
        if p.cached and p.full_pass:
            mine = [guided.index(k)] if p.guided else []
            p.deep = deep[mine + [n_guided + k]]  # indexing by a list copies
    return eps


_warned_no_split = False


def _warn_no_split() -> None:
    global _warned_no_split
    if not _warned_no_split:
        log.warning("cache_interval > 1 needs the UNet cut in two (split_unet), which this backend lacks: "
                    "painting with full UNet steps instead")
        _warned_no_split = True


def decode_pictures(pictures: list[Picture], vae_decode: Callable) -> list[torch.Tensor]:
    """The finished pictures' images (3, H, W) in [0, 1], decoded VAE_BATCH at a time per size."""
    images: list[torch.Tensor | None] = [None] * len(pictures)
    by_size: dict[tuple, list[int]] = {}
    for i, p in enumerate(pictures):
        by_size.setdefault(tuple(p.latents.shape), []).append(i)
    for indices in by_size.values():
        for at in range(0, len(indices), VAE_BATCH):
            chunk = indices[at:at + VAE_BATCH]
            decoded = vae_decode(torch.cat([pictures[i].latents for i in chunk]))
            for i, image in zip(chunk, decoded):
                images[i] = image
    return images


def denoise_group(requests: list[ImageRequest], unet: Callable, vae_decode: Callable, scheduler_config: dict,
                  latent_channels: int, vae_scale: int, device, dtype,
                  check_cancel: Callable[[], None] | None = None, split_unet: Callable | None = None) -> torch.Tensor:
    """Paint pictures of one latent size together from start to end; returns (N, 3, H, W) in [0, 1]. Pictures
    with fewer steps leave the UNet batch when they are done."""
    pictures = [start_picture(r, scheduler_config, latent_channels, vae_scale, device, dtype) for r in requests]
    while True:
        going = [p for p in pictures if not p.done]
        if not going:
            break
        if check_cancel:
            check_cancel()
        denoise_step(going, unet, split_unet)
    return torch.stack(decode_pictures(pictures, vae_decode))
