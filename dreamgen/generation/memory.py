"""How many positions the slot pool's KV cache holds: sized from a memory budget, not from slots x context.

    CUDA   a fraction (DREAMGEN_KV_MEMORY_FRACTION, 0.9) of what is free once the weights are loaded and one
           peak step has run (the UNet batch of every slot's picture with guidance, then a VAE decode), as vLLM
           sizes its pool after a profiling run
    CPU    never more than the job's documents can use, and at most DREAMGEN_KV_CPU_SHARE of available memory

Either way never more than the slots can fill (slots x context). DREAMGEN_KV_TOKENS fixes the size instead.
Admission reserves each document's worst case in the pool, so documents wait while theirs does not fit; the pool
must hold one whole context, or nothing could run. `plan_pool` is a pure function, so a plan for another machine
(`dreamgen model plan --device-memory 80GiB`) is the same arithmetic with an estimated step in place of a measured one.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .. import settings
from ..errors import DreamgenError
from .kv import PAGE

GIB = 2 ** 30
CUDA_CONTEXT_BYTES = GIB  # a plan for a card not at hand: the CUDA context and the allocator's slack, estimated


class MemoryPlanError(DreamgenError):
    """The pool cannot hold one document's context in the memory there is."""


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    weights_bytes: int  # parameters and buffers of every part
    kv_bytes_per_token: int  # keys and values of every layer for one position
    context: int  # positions of one document at most
    slots: int
    pool_tokens: int  # what the pool holds, in whole pages
    limit: str  # what decided the size: "memory", "documents", "slots" or "fixed" (the KV_TOKENS setting)
    budget_bytes: int | None = None  # what the pool could take of the memory
    step_bytes: int | None = None  # peak of one step above the weights
    step: str = ""  # "measured" or "estimated"
    device_bytes: int | None = None  # the card's memory (CUDA) or available memory (CPU)

    @property
    def pool_bytes(self) -> int:
        return self.pool_tokens * self.kv_bytes_per_token

    @property
    def full_documents(self) -> int:
        """Documents of a whole context that fit in the pool at once."""
        return self.pool_tokens // _whole_pages(self.context)

    def lines(self) -> list[str]:
        lines = [f"memory plan on {self.device}: weights {_gb(self.weights_bytes)}, KV "
                 f"{self.kv_bytes_per_token / 2 ** 10:.0f} KiB a token"]
        if self.step_bytes is not None:
            lines.append(f"  one peak step ({self.step}): {_gb(self.step_bytes)}"
                         + (f" of {_gb(self.device_bytes)}" if self.device_bytes else ""))
        lines.append(f"  KV pool: {self.pool_tokens:,} tokens, {_gb(self.pool_bytes)} ({_why(self)}): "
                     f"{self.full_documents} documents of the full {self.context}-token context at once, "
                     f"{self.slots} slots")
        return lines


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _why(plan: MemoryPlan) -> str:
    if plan.limit == "memory":
        return f"the memory budget of {_gb(plan.budget_bytes)}"
    if plan.limit == "documents":
        return "what the job's documents can use"
    if plan.limit == "slots":
        return "what the slots can fill"
    return f"fixed by {settings.KV_TOKENS.name}"


def _whole_pages(tokens: int) -> int:
    return -(-tokens // PAGE) * PAGE


def plan_pool(*, device: str, weights_bytes: int, kv_bytes_per_token: int, context: int, slots: int,
              budget_bytes: int | None, job_tokens: int | None = None, fixed_tokens: int | None = None,
              step_bytes: int | None = None, step: str = "", device_bytes: int | None = None,
              least_tokens: int | None = None) -> MemoryPlan:
    """The pool: `fixed_tokens` if set, else the least of what the slots can fill (slots x context), what the
    job's documents can use (`job_tokens`, when known) and what `budget_bytes` holds. Raises MemoryPlanError
    when that is less than `least_tokens` (default: one whole context): no document could be admitted."""
    facts = dict(device=device, weights_bytes=weights_bytes, kv_bytes_per_token=kv_bytes_per_token, context=context,
                 slots=slots, budget_bytes=budget_bytes, step_bytes=step_bytes, step=step, device_bytes=device_bytes)
    if fixed_tokens is not None:
        return MemoryPlan(pool_tokens=_whole_pages(fixed_tokens), limit="fixed", **facts)
    limits = {"slots": slots * _whole_pages(context)}
    if job_tokens is not None:
        limits["documents"] = _whole_pages(job_tokens)
    if budget_bytes is not None:
        limits["memory"] = max(0, budget_bytes // kv_bytes_per_token) // PAGE * PAGE
    limit = min(limits, key=limits.get)
    plan = MemoryPlan(pool_tokens=limits[limit], limit=limit, **facts)
    least = _whole_pages(least_tokens if least_tokens is not None else context)
    if plan.pool_tokens < least:
        raise MemoryPlanError(f"the KV pool on {device} can hold {plan.pool_tokens:,} positions "
                              f"({_why(plan)}), less than one document's {least:,} (fewer slots make the peak "
                              "step smaller: it paints a picture a slot): " + "; ".join(l.strip() for l in plan.lines()))
    return plan


# ------------------------------------------------------------------------------------------------ the facts
def weights_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def kv_bytes_per_token(llm_config, dtype: torch.dtype) -> int:
    """Keys and values of every layer for one position (LLaMA-7B: 2 x 32 x 4096 x 2 B = 0.5 MiB in bf16)."""
    head_dim = getattr(llm_config, "head_dim", None) or llm_config.hidden_size // llm_config.num_attention_heads
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * llm_config.num_hidden_layers * llm_config.num_key_value_heads * head_dim * element


def available_host_memory() -> int:
    """MemAvailable of /proc/meminfo (what can be had without swapping); free pages where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimate_step_bytes(unet_config, vae_config, pictures: int, unet_element: int = 2) -> int:
    """An estimate of one peak step above the weights, for a plan without the device: the UNet on `pictures`
    pictures with guidance (2 samples each) at its own sample size, and one VAE decode. Per UNet sample: the skip
    connections the down blocks keep for the up blocks, plus a working set of 16 feature maps at the top
    resolution (a resnet's norm and convolutions, a transformer block's GEGLU, fused attention); per decode: 6 maps
    of the VAE's last block at full resolution, in fp32. gpu_run.sh's memory section measures the real figure."""
    side, channels = unet_config["sample_size"], list(unet_config["block_out_channels"])
    skips = channels[0] * side ** 2  # conv_in's output
    for level, c in enumerate(channels):
        r = side // 2 ** level
        skips += unet_config["layers_per_block"] * c * r ** 2 + (c * (r // 2) ** 2 if level < len(channels) - 1 else 0)
    unet_bytes = 2 * pictures * (skips + 16 * channels[0] * side ** 2) * unet_element
    vae_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    decode_bytes = 6 * vae_config["block_out_channels"][0] * (side * vae_factor) ** 2 * 4
    return max(unet_bytes, decode_bytes)


@torch.no_grad()
def measure_cuda_step(model, components, pictures: int) -> tuple[int, int, int]:
    """(free bytes once the weights are in, peak bytes of one step above them, the card's bytes), measured: the
    UNet on `pictures` pictures with guidance at the model's picture size (eager: the measure must not compile),
    then one VAE batch (diffusion.VAE_BATCH pictures)."""
    from .diffusion import VAE_BATCH
    device = model.device
    head = model.head
    side = head.default_image_size // head.vae_scale_factor
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    sample = torch.randn(2 * pictures, head.unet.config.in_channels, side, side, device=device, dtype=model.dtype)
    cond = torch.randn(2 * pictures, model.special.num_dream_queries, head.unet.config.cross_attention_dim,
                       device=device, dtype=model.dtype)
    unet = getattr(components, "eager_unet", components.unet)
    unet(sample, torch.tensor(500, device=device), cond)
    del sample, cond
    components.vae_decode(torch.randn(VAE_BATCH, head.vae.config.latent_channels, side, side, device=device))
    torch.cuda.synchronize(device)
    step = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    return free, step, total


def cuda_budget(free: int, step: int, fraction: float) -> int:
    return math.floor(fraction * max(0, free - step))


def card_budget(device_bytes: int, weights: int, step: int, fraction: float) -> int:
    """The budget on a card not at hand: what would be free after the weights and the CUDA context."""
    return cuda_budget(device_bytes - weights - CUDA_CONTEXT_BYTES, step, fraction)


# ------------------------------------------------------------------------------------------------ a card not at hand
def card_plan(*, device_bytes: int, weights: int, kv_per_token: int, context: int, slots: int, step_bytes: int,
              fraction: float) -> MemoryPlan:
    """The plan on a card of `device_bytes` that is not here: the step estimated, the CUDA context guessed."""
    return plan_pool(device=f"a card of {device_bytes / GIB:.1f} GiB", weights_bytes=weights,
                     kv_bytes_per_token=kv_per_token, context=context, slots=slots,
                     budget_bytes=card_budget(device_bytes, weights, step_bytes, fraction), step_bytes=step_bytes,
                     step="estimated", device_bytes=device_bytes)


def model_card_plan(model, device_bytes: int, slots: int, fraction: float) -> MemoryPlan:
    """card_plan of a built model (its parameters may be on the meta device), in the dtypes it holds."""
    head = model.head
    return card_plan(device_bytes=device_bytes, weights=weights_bytes(model),
                     kv_per_token=kv_bytes_per_token(model.llm.config, model.dtype), context=model.max_positions,
                     slots=slots, fraction=fraction, step_bytes=estimate_step_bytes(
                         head.unet.config, head.vae.config, slots, head.unet.dtype.itemsize))


def checkpoint_card_plan(name_or_path: str, device_bytes: int, slots: int, fraction: float,
                         dtype: torch.dtype = torch.bfloat16) -> MemoryPlan:
    """card_plan of a checkpoint, from its files alone (no weight read): every part in `dtype` but the VAE (fp32,
    as the loader keeps it)."""
    from types import SimpleNamespace

    from ..model.card import find_diffusion_dir, plugin, read_json
    from ..model.locate import resolve_checkpoint
    from ..model.tensors import open_part

    ckpt = resolve_checkpoint(name_or_path)
    config = read_json(ckpt / "config.json")
    element = torch.tensor([], dtype=dtype).element_size()
    weights = 0
    for part in ("pytorch_model", "clip_vision_embedding", "dream_embedding", "stable_diffusion_head"):
        files = open_part(ckpt, part)
        for key in files.keys():
            weights += math.prod(files.shape(key)) * (4 if key.startswith("vae.") else element)
    llm = SimpleNamespace(num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                          **{k: config.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                        "head_dim")})
    sd_dir = find_diffusion_dir(ckpt, plugin(config, "stable_diffusion_head", ckpt).get("diffusion_name_or_path", "."))
    unet, vae = read_json(sd_dir / "unet" / "config.json"), read_json(sd_dir / "vae" / "config.json")
    return card_plan(device_bytes=device_bytes, weights=weights, kv_per_token=kv_bytes_per_token(llm, dtype),
                     context=config["max_position_embeddings"], slots=slots, fraction=fraction,
                     step_bytes=estimate_step_bytes(unet, vae, slots, element))
