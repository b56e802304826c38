"""The memory plan of a 7B-shaped DreamLLM on this card: as `dreamgen model plan` estimates it, then as the generator
measures it (the weights on the card, uninitialised; one peak step: the UNet on 64 pictures with guidance and a
VAE decode), then the planned KV pool allocated beside them, to show it fits."""
from __future__ import annotations

import torch

from dreamgen.generation.config import DEFAULT_SLOTS, GeneratorConfig
from dreamgen.generation.generator import Generator
from dreamgen.generation.memory import model_card_plan
from dreamgen.model.released_shape import build_released_shape

TITLE = "Memory plan: a 7B-shaped DreamLLM (LLaMA-7B, CLIP ViT-L/14, SD 2.1-base) on this card, 64 slots"
BUDGET_S = 45
FRACTION = 0.9


def row(table, how: str, plan) -> None:
    table.row(how, plan.weights_bytes / 1e9, plan.step_bytes / 1e9, plan.budget_bytes / 1e9,
              f"{plan.pool_tokens:,}", plan.pool_bytes / 1e9, plan.full_documents, plan.limit)


def run(table, device: str) -> None:
    table.header("plan", "weights GB", "peak step GB", "KV budget GB", "pool tokens", "pool GB",
                 "whole 2048-token documents", "decided by")
    slots = DEFAULT_SLOTS["cuda"]
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 80 * 2 ** 30
    model = build_released_shape()
    row(table, "estimated (`dreamgen model plan`)", model_card_plan(model, total, slots, FRACTION))
    if device != "cuda":
        table.note("A dry run: the measured plan needs the card (80 GiB assumed above).")
        return
    model.to_empty(device="cuda")  # the shapes on the card, no values: memory is what is measured here
    generator = Generator(model, config=GeneratorConfig(slots=slots, kv_fraction=FRACTION))
    plan = generator.memory_plan(slots)
    row(table, "measured (`dreamgen run` on this card)", plan)
    runner = generator._runner_for(plan.pool_tokens)
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved()
    free, _ = torch.cuda.mem_get_info()
    table.note(f"The measured pool allocated beside the weights: {runner.pool.stats.pool_bytes / 1e9:.1f} GB; "
               f"torch holds {reserved / 1e9:.1f} GB of the card's {total / 1e9:.1f} GB, {free / 1e9:.1f} GB free.")
