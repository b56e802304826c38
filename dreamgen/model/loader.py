"""A model by name: a checkpoint directory, a built-in name, or a hub id, loaded in the released layout."""
from __future__ import annotations

from .checkpoint import read_checkpoint
from .dreamllm import DreamLLM
from .locate import resolve_checkpoint

__all__ = ["load_model", "resolve_checkpoint"]


def load_model(name_or_path: str, dtype: str = "auto", device: str = "cpu") -> DreamLLM:
    """`dtype` auto: bf16 on CUDA (the VAE in fp32), fp32 on the CPU."""
    return read_checkpoint(resolve_checkpoint(name_or_path), name_or_path, dtype=dtype, device=device)
