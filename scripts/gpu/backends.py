"""Parity and timings per backend on the tiny and small random models (what scripts/gpu_check.py measured):
torch on CUDA in fp32 and bf16 (bf16 is what `--dtype auto` gives there), and ONNX Runtime, whose CPU build is
the one that machine has, on its graphs exported from the same model. The backends run the UNet, the VAE decoder
and the vision encoder, so those are timed; the LM stays on torch on every backend (dreamgen/generation/runner.py)
and shows only in the document's time. TensorRT cannot be installed there (gpu.md)."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from dreamgen.engines import EngineCache, OnnxComponents, ensure_onnx_graphs
from dreamgen.engines.build import graph_files
from dreamgen.engines.verify import verify_components
from dreamgen.generation.components import TorchComponents
from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.model.sizes import SMALL_SIZES
from dreamgen.model.tiny import build_tiny_model
from dreamgen.params import GenerationParams

TITLE = "Backends on the tiny and small random models: parity with torch, timings, the same document"
BUDGET_S = 40
ROWS = [(config, backend, device, precision) for config in ("tiny", "small")
        for backend, device, precision in (("torch", None, "fp32"), ("torch", None, "bf16"), ("onnx", "cpu", "fp32"))]
# None: the section's device (cuda); ONNX Runtime on the CPU, the only build that machine has


def build_model(config: str, precision: str, device: str):
    model = build_tiny_model(seed=0, name=f"{config}-random", sizes=SMALL_SIZES if config == "small" else None)
    model.to(device)
    if precision == "bf16":  # as load_model does it: everything bf16 but the VAE
        for part in (model.llm, model.vision, model.dream, model.head.unet, model.head.projector):
            part.to(torch.bfloat16)
    return model


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synchronized_median(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(model, components) -> dict:
    device = model.device
    unet = model.head.unet.config
    side = unet.sample_size
    sample = torch.randn(2, unet.in_channels, side, side, device=device, dtype=model.dtype)
    cond = torch.randn(2, model.special.num_dream_queries, unet.cross_attention_dim, device=device, dtype=model.dtype)
    unet_s = synchronized_median(lambda: components.unet(sample, torch.tensor(500), cond), 5)
    latents = torch.randn(1, model.head.vae.config.latent_channels, side, side, device=device)  # the VAE is fp32
    vae_s = synchronized_median(lambda: components.vae_decode(latents), 5)
    images = torch.rand(2, 3, model.head.default_image_size, model.head.default_image_size, device=device)
    vision_s = synchronized_median(lambda: components.encode_images(images), 5)
    request = DocumentRequest(prompt="how to bake bread",
                              params=GenerationParams(seed=5, steps=10, max_new_tokens=48, max_images=1))
    generator = Generator(model, components)
    generator.generate([request])  # warm-up
    sync()
    started = time.perf_counter()
    text = generator.generate([request])[0].text
    sync()
    return {"unet_ms": 1000 * unet_s, "vae_ms": 1000 * vae_s, "vision_ms": 1000 * vision_s,
            "document_s": time.perf_counter() - started, "text": text}


def run(table, device: str) -> None:
    table.header("config", "backend", "device", "precision", "parity", "UNet ms", "VAE ms", "vision ms",
                 "document s", "build s", "text vs torch fp32")
    cache = EngineCache(Path(tempfile.mkdtemp(prefix="dreamgen-gpu-run-")))
    reference = {}
    for config, backend, where, precision in ROWS:
        where = where or device
        head = (config, backend, where, precision)
        try:
            model = build_model(config, precision, where)
            started = time.perf_counter()
            if backend == "torch":
                components, parity = TorchComponents(model), "-"
            else:
                components = OnnxComponents(model, graph_files(ensure_onnx_graphs(model, precision, cache)))
                checks = verify_components(model, components, backend, precision)
                parity = f"{max(c.error for c in checks):.1e}" + ("" if all(c.ok for c in checks) else " OVER")
            build_s = time.perf_counter() - started
            row = measure(model, components)
            reference.setdefault(config, row["text"])
            table.row(*head, parity, row["unet_ms"], row["vae_ms"], row["vision_ms"], row["document_s"], build_s,
                      "same" if row["text"] == reference[config] else "differs")
        except Exception as e:  # every row in its own try: say why and go on
            table.row(*head, f"failed: {type(e).__name__}: {' '.join(str(e).split())[:160]}", *[""] * 6)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
