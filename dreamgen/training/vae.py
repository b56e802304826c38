"""The VAE stage: an image autoencoder (diffusers' AutoencoderKL) trained from scratch on the data's pictures.

loss = l1 * |x' - x| + mse * (x' - x)^2 + kl * KL(q(z|x) || N(0, I)), with x' decoded from a posterior sample;
with loss.foreground_weight the pixel terms weigh the pixels on and around a shape more (see pixel_weights).
At the end the latents' spread is measured and stored as the VAE's scaling_factor, so scaled latents have unit
variance, as the diffusion schedule assumes. The result is a diffusers folder (`model.vae` of an igpt config).
"""
from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from .architecture import build_vae
from .config import VAEConfig
from .data import batch_indices, image_paths, load_image
from .loop import OnEvent, StepLog, lr_at, make_optimizer, open_run, step_generator, update
from .trainer import TrainResult, load_vae

log = logging.getLogger(__name__)

SCALE_SAMPLE = 512  # images whose latents set the scaling factor
# What pixel_weights calls foreground, for pictures on a plain background: the frame that samples the background
# colour, and the RGB distance (in [0, 1] units per channel) that sets a pixel apart from it.
BACKGROUND_FRAME = 3
FOREGROUND_DISTANCE = 70 / 255


def pixel_weights(pixels: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """pixels (N, 3, S, S) in [0, 1] -> (N, 1, S, S): 1 + foreground_weight on the foreground and the pixel
    around it, 1 elsewhere. The background is the median colour of each picture's border (as the shapes checker
    reads it); the foreground is every pixel farther from it than FOREGROUND_DISTANCE."""
    frame = torch.ones(pixels.shape[-2:], dtype=torch.bool, device=pixels.device)
    frame[BACKGROUND_FRAME:-BACKGROUND_FRAME, BACKGROUND_FRAME:-BACKGROUND_FRAME] = False
    background = pixels[:, :, frame].median(dim=-1).values[:, :, None, None]  # (N, 3, 1, 1)
    far = ((pixels - background) ** 2).sum(dim=1, keepdim=True).sqrt() > FOREGROUND_DISTANCE
    grown = F.max_pool2d(far.float(), kernel_size=3, stride=1, padding=1)  # one pixel out: both sides of the edge
    return 1 + foreground_weight * grown


def vae_loss(vae, pixels: torch.Tensor, config: VAEConfig, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """pixels (N, 3, S, S) in [0, 1] -> (loss, metrics)."""
    x = pixels * 2 - 1
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device)
    recon = vae.decode(z).sample
    if config.loss.foreground_weight:
        # each picture's weights sum to its pixel count, so the loss keeps the scale of a plain per-pixel mean
        w = pixel_weights(pixels, config.loss.foreground_weight)
        w = w / w.mean(dim=(1, 2, 3), keepdim=True)
        l1, mse = (w * (recon - x).abs()).mean(), (w * (recon - x) ** 2).mean()
    else:
        l1, mse = F.l1_loss(recon, x), F.mse_loss(recon, x)
    kl = posterior.kl().mean() / z[0].numel()  # per latent element, so the weight does not depend on the size
    c = config.loss
    loss = c.l1_weight * l1 + c.mse_weight * mse + c.kl_weight * kl
    return loss, {"loss": float(loss.detach()), "l1": float(l1.detach()), "mse": float(mse.detach()),
                  "kl": float(kl.detach())}


def random_crops(pixels: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """(N, 3, S, S) -> (N, 3, crop, crop), each at its own random place."""
    n, _, h, w = pixels.shape
    tops = torch.randint(0, h - crop + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(0, w - crop + 1, (n,), generator=generator).tolist()
    return torch.stack([x[:, t:t + crop, l:l + crop] for x, t, l in zip(pixels, tops, lefts)])


@torch.no_grad()
def set_scaling_factor(vae, paths: list[str], size: int) -> float:
    """Store 1 / std of the latents of (up to) SCALE_SAMPLE images as the VAE's scaling_factor."""
    picked = paths[:: max(1, len(paths) // SCALE_SAMPLE)][:SCALE_SAMPLE]
    generator = torch.Generator().manual_seed(0)
    latents = torch.cat([vae.encode(torch.stack([load_image(p, size) for p in picked[i:i + 64]]) * 2 - 1)
                         .latent_dist.sample(generator) for i in range(0, len(picked), 64)])
    factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


def train_vae(config: VAEConfig, on_event: OnEvent | None = None, resume: bool = True) -> TrainResult:
    emit = on_event or (lambda kind, info: None)
    out, latest, state = open_run(config.output_dir, config.threads, resume)
    o, size = config.optim, config.architecture.image_size
    torch.manual_seed(config.seed)
    if latest:
        vae = load_vae(str(latest))
    elif config.init != "new":
        vae = load_vae(config.init)
    else:
        vae = build_vae(config.architecture)
    start = state["step"] if state else 0
    vae.train().requires_grad_(True)
    if config.decoder_only:
        for module in (vae.encoder, vae.quant_conv):
            module.requires_grad_(False)
    named = [(n, p) for n, p in vae.named_parameters() if p.requires_grad]
    optimizer = make_optimizer(named, o)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    paths = image_paths(config.data.train)
    params = [p for _, p in named]
    emit("start", {"stage": "vae", "step": start, "steps": o.steps, "images": len(paths),
                   "trainable": sum(p.numel() for p in params), "resumed_from": str(latest) if latest else None})

    step_log = StepLog(out, config, o.steps, optimizer, vae.save_pretrained, emit)
    started = time.perf_counter()
    for step in range(start, o.steps):
        lr = lr_at(step, o)
        generator = step_generator(config.seed, step)
        indices = batch_indices(len(paths), o.batch_size, step, config.seed)
        pixels = torch.stack([load_image(paths[i], size) for i in indices])  # (B, 3, S, S)
        if config.data.crop:
            pixels = random_crops(pixels, config.data.crop, generator)
        loss, metrics = vae_loss(vae, pixels, config, generator)
        metrics["grad_norm"] = update(optimizer, loss, params, lr, o.grad_clip)
        step_log.step_done(step + 1, lr, metrics)

    vae.eval()
    factor = vae.config.scaling_factor if config.decoder_only else set_scaling_factor(vae, paths, size)
    final = out / "final"
    vae.save_pretrained(final)
    seconds = time.perf_counter() - started
    emit("done", {"path": str(final), "seconds": seconds, "scaling_factor": factor, **step_log.last})
    return TrainResult(output=final, steps=o.steps, seconds=seconds,
                       metrics={**step_log.last, "scaling_factor": factor})
