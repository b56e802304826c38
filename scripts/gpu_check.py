"""Accelerator check: parity and timings of every backend that can run on this GPU machine, as one table.

    python scripts/gpu_check.py [--budget 450] [--json OUT.json]      (scripts/gpu_check.sh wraps it)
    python scripts/gpu_check.py --device cpu --configs tiny           (a dry run of the script itself, on CPU)

Rows: torch on CUDA (fp32, fp16), ONNX Runtime with CUDAExecutionProvider where it is installed, TensorRT where
it imports; for the tiny and the small configuration. Each row runs in its own try: a backend that cannot run
prints 'skipped: reason' and the others go on. Parity is each part against torch on the same GPU (verify.py's
error: max |diff| / max(1, max |torch|)); timings are medians after a warm-up. Rows that would start after
`--budget` seconds are skipped, so the whole run stays under the 8 minutes a lent machine allows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

CONFIGS = ("tiny", "small")


def build_model(config: str, precision: str, device: str):
    from dreamgen.model.tiny import SMALL_SIZES, build_tiny_model

    model = build_tiny_model(seed=0, name=f"{config}-random", sizes=SMALL_SIZES if config == "small" else None)
    model.to(device)
    if precision == "fp16":  # as load_model does it: everything fp16 but the VAE
        for part in (model.llm, model.vision, model.dream, model.head.unet, model.head.projector):
            part.to(torch.float16)
    return model


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synchronized_median(call, repeats: int) -> float:
    call()
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(model, components, backend: str, precision: str) -> dict:
    from dreamgen.engines.verify import verify_components
    from dreamgen.generation.generator import DocumentRequest, Generator
    from dreamgen.params import GenerationParams

    checks = verify_components(model, components, backend, precision)
    device = model.device
    unet = model.head.unet.config
    side = unet.sample_size
    sample = torch.randn(2, unet.in_channels, side, side, device=device, dtype=model.dtype)
    cond = torch.randn(2, model.special.num_dream_queries, unet.cross_attention_dim, device=device, dtype=model.dtype)
    unet_s = synchronized_median(lambda: components.unet(sample, torch.tensor(500), cond), 20)
    batch, context = 4, min(512, model.max_positions // 2)
    embeds = torch.randn(batch, context, model.hidden_size, device=device, dtype=model.dtype) * 0.02
    mask = torch.ones(batch, context, dtype=torch.long, device=device)
    positions = torch.arange(context, device=device).expand(batch, -1)
    past = components.lm_step(embeds, mask, positions, None)[2]
    token = embeds[:, :1]
    mask1 = torch.ones(batch, context + 1, dtype=torch.long, device=device)
    position1 = torch.full((batch, 1), context, device=device)
    decode_s = synchronized_median(lambda: components.lm_step(token, mask1, position1, past), 30)
    request = DocumentRequest(prompt="how to bake bread",
                              params=GenerationParams(seed=5, steps=10, max_new_tokens=48, max_images=1))
    generator = Generator(model, components)
    document_s = synchronized_median(lambda: generator.generate([request]), 2)
    text = generator.generate([request])[0].text
    return {"parity": max(c.error for c in checks), "parity_ok": all(c.ok for c in checks),
            "parts": {c.part: c.error for c in checks}, "unet_ms": 1000 * unet_s, "decode_ms": 1000 * decode_s,
            "document_s": document_s, "text": text}


def make_components(backend: str, model, precision: str, cache):
    """(components, seconds spent exporting/building)."""
    from dreamgen.engines import EngineLimits, OnnxComponents, ensure_onnx_graphs
    from dreamgen.engines.build import graph_files
    from dreamgen.errors import EngineError
    from dreamgen.generation.components import TorchComponents

    started = time.perf_counter()
    if backend == "torch":
        return TorchComponents(model), 0.0
    if backend == "onnx":
        import onnxruntime as ort

        if model.device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineError(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                              f"(providers: {', '.join(ort.get_available_providers())}; pip install onnxruntime-gpu)")
        components = OnnxComponents(model, graph_files(ensure_onnx_graphs(model, precision, cache)))
        if model.device.type == "cuda" and components.provider != "CUDAExecutionProvider":
            raise EngineError(f"ONNX Runtime fell back to {components.provider}")
        return components, time.perf_counter() - started
    from dreamgen.engines.tensorrt_backend import ENGINE_FILE, TensorRTComponents, ensure_tensorrt_engines

    engines = ensure_tensorrt_engines(model, precision, cache, limits=EngineLimits(max_batch=4))
    components = TensorRTComponents(model, {part: e.file(ENGINE_FILE) for part, e in engines.items()})
    return components, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=450, help="start no new row after this many seconds")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to dry-run this script")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: tiny, small")
    args = parser.parse_args()
    started = time.perf_counter()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # it warns on every .to(fp16) of a UNet
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: torch sees no CUDA GPU; nothing to check here")
        return 0
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    try:
        import onnxruntime as ort
        print(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}")
    except ImportError as e:
        print(f"onnxruntime: not importable ({e})")
    from dreamgen.engines.tensorrt_backend import tensorrt_problem
    print(f"tensorrt: {tensorrt_problem() or 'importable'}")

    from dreamgen.engines import EngineCache

    cache = EngineCache(Path(tempfile.mkdtemp(prefix="dreamgen-gpu-check-")))
    plan = [(config, backend, precision) for config in args.configs.split(",") for backend in ("torch", "onnx", "tensorrt")
            for precision in ("fp32", "fp16")]
    rows, texts = [], {}
    for config, backend, precision in plan:
        row = {"config": config, "backend": backend, "precision": precision}
        rows.append(row)
        if time.perf_counter() - started > args.budget:
            row["skipped"] = f"time budget of {args.budget:.0f} s spent"
            continue
        try:
            model = build_model(config, precision, args.device)
            components, build_s = make_components(backend, model, precision, cache)
            row.update(measure(model, components, backend, precision), build_s=build_s)
            # the same document on every backend of one config and precision (greedy text)
            reference = texts.setdefault((config, precision), row["text"])
            row["same_text_as_torch"] = row["text"] == reference
        except Exception as e:  # every backend in its own try: report and go on
            row["skipped"] = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
            if not isinstance(e, (ImportError, OSError)) and "unavailable" not in str(e):
                traceback.print_exc(limit=3)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    print(f"\n{'config':7}{'backend':10}{'prec':6}{'parity':>10}{'UNet ms':>10}{'decode ms':>11}{'doc s':>8}"
          f"{'build s':>9}  text")
    for row in rows:
        head = f"{row['config']:7}{row['backend']:10}{row['precision']:6}"
        if "skipped" in row:
            print(f"{head}skipped: {row['skipped']}")
            continue
        print(f"{head}{row['parity']:>10.1e}{row['unet_ms']:>10.2f}{row['decode_ms']:>11.2f}{row['document_s']:>8.2f}"
              f"{row['build_s']:>9.1f}  {'same' if row['same_text_as_torch'] else 'DIFFERS'}"
              f"{'' if row['parity_ok'] else '  PARITY OVER TOLERANCE'}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; engines in {cache.root}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
