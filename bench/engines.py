"""Engines on CPU: torch vs ONNX Runtime on the "small" configuration, as ratios measured in one run.

    .venv/bin/python bench/engines.py [--threads 2] [--repeats 7] [--steps 8] [--tokens 48]

Prints, for fp32 on CPUExecutionProvider with `threads` intra-op threads on both sides:
  - export time per graph and the time to create the ONNX Runtime sessions (its "engine build");
  - UNet step (guided batch of 2 at the model's 512 px), VAE decode (one picture), vision encoder (2 pictures),
    and whole documents (an article that reads an input picture, and a picture painted from a caption, in
    lockstep: every part runs; the LM runs on torch on both sides): medians of interleaved runs, so load from
    other processes hits both sides;
  - cold start of a worker process (import, load the checkpoint, ready to generate) with a cold engine cache
    (exports the graphs) and a warm one, against a torch worker.
TensorRT cannot run here (no GPU), nor on the GPU machine scripts/gpu_run.sh runs on (no tensorrt wheel there).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dreamgen.engines import EngineCache, OnnxComponents, ensure_onnx_graphs  # noqa: E402
from dreamgen.engines.build import graph_files  # noqa: E402
from dreamgen.generation.components import TorchComponents  # noqa: E402
from dreamgen.generation.generator import DocumentRequest, Generator  # noqa: E402
from dreamgen.model.checkpoint import save_checkpoint  # noqa: E402
from dreamgen.model.loader import load_model  # noqa: E402
from dreamgen.model.tiny import SMALL_SIZES, build_tiny_model  # noqa: E402
from dreamgen.params import GenerationParams  # noqa: E402

WORKER = """
import json, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads({threads})
from dreamgen.model.loader import load_model
from dreamgen.engines import EngineCache, select_backend
imported = time.perf_counter()
model = load_model({checkpoint!r})
loaded = time.perf_counter()
components, message = select_backend({backend!r}, model, cache=EngineCache({cache!r}), threads={threads})
ready = time.perf_counter()
print(json.dumps({{"import": imported - started, "load": loaded - imported, "backend": ready - loaded,
                  "total": ready - started, "message": message}}))
"""


def max_pixel_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def interleaved(calls: dict, repeats: int) -> dict:
    """Median seconds of each call, run in turn (one warm-up each first)."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def cold_start(checkpoint: Path, cache: Path, backend: str, threads: int) -> dict:
    code = WORKER.format(threads=threads, checkpoint=str(checkpoint), backend=backend, cache=str(cache))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8, help="denoising steps of the whole document")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens of the whole document")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.threads} threads each side")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A checkpoint on disk, as a worker has it (the graphs' cache key comes from its files).
        checkpoint = save_checkpoint(build_tiny_model(seed=0, name="small-random", sizes=SMALL_SIZES), tmp / "small")
        model = load_model(str(checkpoint))
        cache = EngineCache(tmp / "engines")

        # 1. export and session build
        started = time.perf_counter()
        graphs = ensure_onnx_graphs(model, "fp32", cache)
        export_s = time.perf_counter() - started
        started = time.perf_counter()
        onnx = OnnxComponents(model, graph_files(graphs), threads=args.threads)
        sessions_s = time.perf_counter() - started
        reference = TorchComponents(model)
        print(f"\nexport (legacy exporter, fp32): {export_s:.1f} s in all; "
              + ", ".join(f"{p} {g.manifest['build_seconds']:.1f} s" for p, g in graphs.items()))
        print(f"ONNX Runtime sessions (graph optimization, ORT_ENABLE_ALL): {sessions_s:.1f} s for the three graphs")

        # 2. UNet step: a guided picture at the model's size
        unet = model.head.unet.config
        side = unet.sample_size
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(2, unet.in_channels, side, side, generator=g)
        cond = torch.randn(2, model.special.num_dream_queries, unet.cross_attention_dim, generator=g)
        t = torch.tensor(500)
        unet_s = interleaved({"torch": lambda: reference.unet(sample, t, cond),
                              "onnx": lambda: onnx.unet(sample, t, cond)}, args.repeats)

        # 3. the other two graphs: one picture decoded, two pictures read (the LM is not a graph: torch on both)
        latents = torch.randn(1, model.head.vae.config.latent_channels, side, side, generator=g)
        vae_s = interleaved({"torch": lambda: reference.vae_decode(latents),
                             "onnx": lambda: onnx.vae_decode(latents)}, args.repeats)
        pictures = torch.rand(2, 3, model.head.default_image_size, model.head.default_image_size, generator=g)
        vision_s = interleaved({"torch": lambda: reference.encode_images(pictures),
                                "onnx": lambda: onnx.encode_images(pictures)}, args.repeats)

        # 4. whole documents. The random small model seldom places a picture by itself, so one document reads
        # a picture (vision encoder + LM) and one paints a picture from a caption (LM + UNet + VAE).
        params = GenerationParams(seed=5, steps=args.steps, max_new_tokens=args.tokens, max_images=1)
        picture = Image.fromarray((torch.rand(96, 128, 3, generator=g) * 255).to(torch.uint8).numpy())
        requests = [DocumentRequest(prompt="describe this picture", params=params, images=[picture]),
                    DocumentRequest(prompt="a red circle on a blue background", params=params, image_only=True)]
        docs = {}

        def documents(name, components):
            docs[name] = Generator(model, components).generate(requests)

        doc_s = interleaved({"torch": lambda: documents("torch", reference),
                             "onnx": lambda: documents("onnx", onnx)}, max(1, args.repeats // 3))
        same_text = docs["torch"][0].text == docs["onnx"][0].text
        pixel_diff = max_pixel_diff(docs["torch"][1].images[0].image, docs["onnx"][1].images[0].image)

        # 5. worker cold start: cold cache (exports), warm cache, and torch
        cold = cold_start(checkpoint, tmp / "cold-engines", "onnx", args.threads)
        warm = cold_start(checkpoint, cache.root, "onnx", args.threads)
        plain = cold_start(checkpoint, cache.root, "torch", args.threads)

    print(f"\n{'':34}{'torch':>10}{'onnx':>10}{'torch/onnx':>12}")
    for name, times in (("UNet step (2x4x64x64)", unet_s), ("VAE decode (1x4x64x64)", vae_s),
                        ("vision encoder (2 pictures)", vision_s), (f"whole documents ({args.steps} steps, {args.tokens} tok)", doc_s)):
        unit, scale = ("s", 1) if "document" in name else ("ms", 1000)
        print(f"{name:34}{times['torch'] * scale:>8.1f}{unit:>2}{times['onnx'] * scale:>8.1f}{unit:>2}"
              f"{times['torch'] / times['onnx']:>11.2f}x")
    print(f"whole documents: same article text on both: {same_text}; largest pixel difference of the painted "
          f"picture: {pixel_diff}/255")
    print("\nworker cold start (import + load checkpoint + backend ready):")
    for name, run in (("onnx, cold engine cache (exports)", cold), ("onnx, warm engine cache", warm),
                      ("torch", plain)):
        print(f"  {name:36}{run['total']:6.1f} s  (import {run['import']:.1f}, load {run['load']:.1f}, "
              f"backend {run['backend']:.1f})")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print("TensorRT: skipped here (no GPU, no tensorrt wheel); see docs/gpu.md")


if __name__ == "__main__":
    main()
