"""A model by name: a checkpoint directory, a built-in name, or a hub id, loaded in the released layout."""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from .builtin import builtin_model_dir, is_builtin
from .checkpoint import read_checkpoint
from .dreamllm import DreamLLM

HF_ID_HINT = "e.g. RunpeiDong/dreamllm-7b-chat-v1.0"


def load_model(name_or_path: str, dtype: str = "fp32", device: str = "cpu") -> DreamLLM:
    return read_checkpoint(resolve_checkpoint(name_or_path), name_or_path, dtype=dtype, device=device)


def resolve_checkpoint(name_or_path: str) -> Path:
    """A local directory as it is; a built-in name from the built-in models; a hub id via snapshot_download."""
    if is_builtin(name_or_path):
        return builtin_model_dir(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory (config.json, *.bin/*.safetensors)")
    if name_or_path.count("/") != 1 or name_or_path.startswith((".", "/")):
        raise CheckpointError(f"no checkpoint directory at {path} (and it is not a hub id such as {HF_ID_HINT})")
    return _download(name_or_path)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"'{repo_id}' looks like a hub id, but huggingface_hub is not installed") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.bin", "*.safetensors", "*.model"]))
    except Exception as e:  # offline, unknown repo, gated: all end in the same advice
        raise CheckpointError(
            f"could not download '{repo_id}' ({type(e).__name__}). Without a network, download it on another "
            f"machine with `huggingface-cli download {repo_id} --local-dir DIR`, copy DIR here and pass --model DIR"
        ) from None
