"""Decode speed of a 7B-shaped DreamLLM (random bf16 weights built on the card from the released config): tokens/s
at 1, 16, 32 and 64 documents of 512 prompt + 512 new tokens, against the floor of reading the weights and the live
KV once per step at the bandwidth a device-to-device copy measures in this run. The step is the generator's
(generation/runner.py): flex attention over the pool, the decode buckets compiled and replayed as CUDA graphs;
the eager gather + SDPA step at 64 documents beside it. Every document decodes every step (end of sequence is
not looked at: random weights make lengths arbitrary)."""
from __future__ import annotations

import time

import numpy as np
import torch

from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.lm import Run
from dreamgen.generation.memory import kv_bytes_per_token, weights_bytes
from dreamgen.generation.runner import ModelRunner
from dreamgen.model.released_shape import build_released_shape, fill_random
from dreamgen.model.sizes import SMALL_SIZES
from dreamgen.model.tiny import build_tiny_model

TITLE = "Decode: 7B-shaped DreamLLM, 512 prompt + 512 new tokens a document, tokens/s against the bandwidth floor"
BUDGET_S = 150
COUNTS = (1, 64, 16, 32)  # the goal's row (64) second: a section stopped at its budget still has it


def copy_bandwidth(device: str) -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write counted), the best of five."""
    if device != "cuda":
        return float("nan")
    a = torch.empty(2 ** 30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    del a, b
    return 2 * 2 ** 30 / best


def decode(model, config: GeneratorConfig, documents: int, prompt: int, new: int) -> tuple[float, float]:
    """(seconds of the `new` decode steps, mean live KV tokens) for `documents` documents decoding together."""
    runner = ModelRunner(model, documents * (prompt + new + 16), config)
    embed = model.llm.model.embed_tokens
    hidden = model.llm.config.hidden_size
    generator = torch.Generator(device=model.device).manual_seed(0)
    with torch.no_grad():
        for slot in range(documents):  # the prompts, one prefill each (not timed)
            runner.open(slot, prompt + new)
            runner.forward(torch.randn(prompt, hidden, device=model.device, dtype=model.dtype, generator=generator)
                           * 0.02, [Run(slot, 0, prompt)], [])
        tokens = torch.zeros(documents, dtype=torch.long, device=model.device)
        warm = 3
        for step in range(new):
            if step == warm:
                torch.cuda.synchronize() if model.device.type == "cuda" else None
                started = time.perf_counter()
            runs = [Run(slot, prompt + step, 1) for slot in range(documents)]
            _, logits = runner.forward(embed(tokens), runs, list(range(documents)))
            tokens = logits.argmax(dim=-1)
            tokens.tolist()  # the generator's one read-back a step
        seconds = time.perf_counter() - started
    runner.release()
    return seconds, documents * (prompt + warm + (prompt + new)) / 2


def run(table, device: str) -> None:
    if device == "cuda":
        model = fill_random(build_released_shape(torch.bfloat16), device)
        prompt, new, counts = 512, 512, COUNTS
    else:  # a dry run of this code on the CPU
        model = build_tiny_model(seed=0, sizes=SMALL_SIZES)
        prompt, new, counts = 32, 8, (1, 4)
    bandwidth = copy_bandwidth(device)
    weights = weights_bytes(model.llm)
    per_token = kv_bytes_per_token(model.llm.config, model.dtype)
    table.header("step", "documents", "tokens/s", "ms/step", "floor ms/step", "x floor")
    table.note(f"device-to-device copy: {bandwidth / 1e12:.2f} TB/s; LM weights {weights / 1e9:.1f} GB; "
               f"KV {per_token / 2 ** 20:.2f} MiB a token")
    ways = [("compiled + CUDA graphs, flex", GeneratorConfig(), counts),
            ("eager, gather + SDPA", GeneratorConfig(attention="sdpa", compile=False, graphs=False), counts[1:2])]
    for name, config, documents_list in ways:
        for documents in documents_list:
            seconds, live = decode(model, config, documents, prompt, new)
            steps = new - 3
            floor = (weights + live * per_token) / bandwidth
            table.row(name, documents, documents * steps / seconds, 1000 * seconds / steps, 1000 * floor,
                      seconds / steps / floor if np.isfinite(floor) else "-")
            if device == "cuda":
                torch.cuda.empty_cache()
    table.note("Goal: <= 1.3x the floor at 64 documents.")
