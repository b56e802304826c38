"""The card, the software, and the floors later sections are measured against (copy bandwidth, bf16 matmul)."""
from __future__ import annotations

import platform
import time

import diffusers
import onnxruntime
import torch
import transformers

from dreamgen.model.llama_cache import cache_keyword

TITLE = "Environment"
BUDGET_S = 25


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_s(call, repeats: int, device: str) -> float:
    """Mean seconds of `repeats` calls, after one warm-up."""
    call()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    sync(device)
    return (time.perf_counter() - started) / repeats


def copy_bandwidth(device: str) -> tuple[float, int]:
    """Bytes a second a copy within the device moves, reads and writes counted (as the decode floor reads the
    weights: gpu.md's 3.0 TB/s on an H100); and the bytes copied (1 GiB on CUDA)."""
    size = 2 ** 30 if device == "cuda" else 2 ** 26
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * size / timed_s(lambda: target.copy_(source), 20, device), size


def matmul_flops(device: str) -> tuple[float, int]:
    n = 8192 if device == "cuda" else 512
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    return 2 * n ** 3 / timed_s(lambda: a @ b, 20, device), n


def run(table, device: str) -> None:
    table.header("what", "value")
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        table.row("card", f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2 ** 30:.1f} GiB, "
                          f"{p.multi_processor_count} SMs")
    else:
        table.row("card", f"none: a dry run on the CPU ({platform.processor() or platform.machine()})")
    table.row("Python", platform.python_version())
    table.row("torch", f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
    table.row("transformers", f"{transformers.__version__} (the decoder's cache keyword: `{cache_keyword()}`)")
    table.row("diffusers", diffusers.__version__)
    table.row("onnxruntime", f"{onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")
    bandwidth, size = copy_bandwidth(device)
    table.row("copy within the device", f"{bandwidth / 1e12:.3f} TB/s ({size / 2 ** 20:.0f} MiB, read + write)")
    flops, n = matmul_flops(device)
    table.row(f"bf16 matmul {n}^3", f"{flops / 1e12:.1f} TFLOP/s")
