"""Where a model named on the command line is: a checkpoint directory, a built-in name, or a hub id (downloaded).
Light (no torch), so a prompt file can be checked against the model before anything loads."""
from __future__ import annotations

import difflib
import logging
from pathlib import Path

from ..errors import CheckpointError
from .builtin import BUILTIN, builtin_model_dir, is_builtin
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
    check_model_name(name_or_path)
    return _download(name_or_path, files or WEIGHT_FILES)


def is_hub_id(name: str) -> bool:
    """Neither a built-in name nor a directory here, but shaped like owner/name: fetched from the hub."""
    return (not is_builtin(name) and not Path(name).expanduser().exists() and name.count("/") == 1
            and not name.startswith((".", "/", "~")))


def check_model_name(name_or_path: str) -> None:
    """That --model names something that can exist: a built-in name, a directory, or a hub id (owner/name, fetched
    later). Cheap (no torch, no network), so a typo is one line at once: with the nearest built-in name and the
    list of them."""
    if is_builtin(name_or_path):
        return
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory (config.json, *.bin/*.safetensors)")
    if is_hub_id(name_or_path):
        return
    near = difflib.get_close_matches(name_or_path, list(BUILTIN), n=1, cutoff=0.6)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise CheckpointError(f"no checkpoint directory at {path}{hint} (built-in models: {', '.join(BUILTIN)}; "
                          f"or give a checkpoint directory, or a hub id, {HF_ID_HINT})")



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
            f"machine with `hf download {repo_id} --local-dir DIR`, copy DIR here and pass --model DIR"
        ) from None
