"""Where a model named on the command line is: a checkpoint directory, a built-in name, or a hub id (downloaded).
Light (no torch), so a prompt file can be checked against the model before anything loads."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import CheckpointError
from .builtin import builtin_model_dir, is_builtin
from .card import ModelCard, read_model_card

log = logging.getLogger(__name__)

HF_ID_HINT = "e.g. RunpeiDong/dreamllm-7b-chat-v1.0"
WEIGHT_FILES = ["*.json", "*.bin", "*.safetensors", "*.model"]
CARD_FILES = ["*.json", "*.model"]  # config.json, configs beside the weights, tokenizer files: no weights


def resolve_checkpoint(name_or_path: str, files: list[str] | None = None) -> Path:
    """A local directory as it is; a built-in name from the built-in models; a hub id via snapshot_download
    (of `files`, default everything a model needs)."""
    if is_builtin(name_or_path):
        return builtin_model_dir(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory (config.json, *.bin/*.safetensors)")
    if name_or_path.count("/") != 1 or name_or_path.startswith((".", "/")):
        raise CheckpointError(f"no checkpoint directory at {path} (and it is not a hub id such as {HF_ID_HINT})")
    return _download(name_or_path, files or WEIGHT_FILES)


def find_model_card(name_or_path: str) -> ModelCard | None:
    """The card of the model named, to check prompts against before anything loads (a hub id fetches its small
    files only). None, with a warning, where it cannot be read here: a path only the workers have, a hub id
    offline; loading the model reports a real problem with it."""
    try:
        return read_model_card(resolve_checkpoint(name_or_path, files=CARD_FILES))
    except CheckpointError as e:
        log.warning("prompt lengths not checked against the model's context: %s", e)
        return None


def _download(repo_id: str, files: list[str]) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"'{repo_id}' looks like a hub id, but huggingface_hub is not installed") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=files))
    except Exception as e:  # offline, unknown repo, gated: all end in the same advice
        raise CheckpointError(
            f"could not download '{repo_id}' ({type(e).__name__}). Without a network, download it on another "
            f"machine with `huggingface-cli download {repo_id} --local-dir DIR`, copy DIR here and pass --model DIR"
        ) from None
