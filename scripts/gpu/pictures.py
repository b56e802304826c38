"""Pictures on an SD 2.1-shaped UNet and VAE (random weights built on the card, UNet bf16, VAE fp32): a 512 px
picture, 50 DDPM steps, guidance 7.5, batch 1 and 8, dreamgen's painter against diffusers' StableDiffusionPipeline
on the same UNet in the same run (eager both; then both on one torch.compile'd UNet, batch 1); and dreamgen's with
the UNet's deep features reused across steps (cache interval 2 and 3, issue 32), in pictures per minute."""
from __future__ import annotations

import copy
import time

import torch

from dreamgen.generation.components import TorchComponents
from dreamgen.generation.diffusion import ImageRequest
from dreamgen.generation.painting import Painter
from dreamgen.model.released_shape import build_released_shape, fill_random
from dreamgen.model.tiny import build_tiny_model

TITLE = "Pictures: SD 2.1-shaped UNet, 512 px, 50 steps, guidance 7.5: dreamgen's painter vs diffusers' pipeline"
BUDGET_S = 120


def timed(call, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run(table, device: str) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if device == "cuda":
        model = fill_random(build_released_shape(torch.bfloat16), device)
        size, steps, batches = 512, 50, (1, 8)
    else:  # a dry run of this code on the CPU
        model = build_tiny_model(seed=0)
        size, steps, batches = 32, 3, (1, 2)
    head = model.head
    queries, width = model.special.num_dream_queries, head.unet.config.cross_attention_dim
    generator = torch.Generator(device=device).manual_seed(0)
    cond = torch.randn(max(batches), queries, width, device=device, dtype=model.dtype, generator=generator)
    uncond = torch.randn(queries, width, device=device, dtype=model.dtype, generator=generator)
    vae_bf16 = copy.deepcopy(head.vae).to(model.dtype)  # the pipeline decodes in its latents' dtype
    pipe = StableDiffusionPipeline(vae=vae_bf16, text_encoder=None, tokenizer=None, unet=head.unet,
                                   scheduler=DDPMScheduler.from_config(head.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def ours(components, batch, cache_interval=1):
        painter = Painter(model, components, encoder=None)
        requests = [ImageRequest(cond=cond[i], uncond=uncond, seed=i, steps=steps, guidance=7.5, scheduler="ddpm",
                                 height=size, width=size, cache_interval=cache_interval) for i in range(batch)]
        return lambda: painter.paint(requests)

    def theirs(batch):
        return lambda: pipe(prompt_embeds=cond[:batch], negative_prompt_embeds=uncond.expand(batch, -1, -1),
                            num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                            generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
                            output_type="pt")

    table.header("UNet", "batch", "dreamgen s/picture", "diffusers s/picture", "diffusers / dreamgen")
    eager = TorchComponents(model)
    for batch in batches:
        mine, peer = ours(eager, batch), theirs(batch)
        mine(), peer()  # warm-up (cuDNN picks its kernels)
        a, b = timed(mine, device) / batch, timed(peer, device) / batch
        table.row("eager", batch, a, b, b / a)
    for interval in (2, 3):  # issue 32: the deep features reused across steps (generation/deepcache.py)
        mine = ours(eager, batches[-1], cache_interval=interval)
        mine()
        a = timed(mine, device) / batches[-1]
        table.row(f"eager, cache interval {interval}", batches[-1], a, "-", f"{60 / a:.0f} pictures/min")
    if device != "cuda":
        table.note("The compiled rows run on CUDA only (compiling on the CPU takes longer than the dry run).")
        return
    compiled = TorchComponents(model, compile=True)  # one compiled UNet for both sides
    pipe.unet = compiled._unet
    mine, peer = ours(compiled, 1), theirs(1)
    mine(), peer()  # compiles (once: the same UNet, the same shapes)
    a, b = timed(mine, device), timed(peer, device)
    table.row("torch.compile", 1, a, b, b / a)
    table.note("Goals: at least equal per picture; <= 0.7 s for one picture.")
