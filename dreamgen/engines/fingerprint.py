"""Which weights a graph was exported from: the model part of an ONNX graph's cache key.

A model loaded from a checkpoint directory is fingerprinted from its files: each file's name and size and five
1 MiB samples of its bytes (start, quarters, end). Hashing a 14 GB checkpoint whole would add a minute to every
worker start; the samples change whenever a save rewrites the weights. A model built in memory (the tiny and
small test models) is fingerprinted from its tensors, whole.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..model.dreamllm import DreamLLM

SAMPLE = 1024 * 1024


def model_fingerprint(model: DreamLLM) -> str:
    path = model.info.path
    if path and Path(path).is_dir():
        return "files:" + checkpoint_fingerprint(Path(path))
    return "weights:" + weights_fingerprint(model)


def checkpoint_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = file.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts):  # lock and marker files say nothing of weights
            continue
        size = file.stat().st_size
        digest.update(f"{relative.as_posix()}\0{size}\0".encode())
        with open(file, "rb") as f:
            for offset in sorted({0, size // 4, size // 2, 3 * size // 4, max(0, size - SAMPLE)}):
                f.seek(offset)
                digest.update(f.read(SAMPLE))
    return digest.hexdigest()


def weights_fingerprint(model: DreamLLM) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()
