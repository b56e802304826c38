"""Built-in model names: checkpoints dreamgen ships (weights/) or builds offline on first use, without a download."""
from __future__ import annotations

import fcntl
from pathlib import Path

from .. import settings
from ..errors import CheckpointError

BUILTIN = {
    "shapes": "a small DreamLLM trained on the shapes world: short illustrated articles about coloured shapes",
    "tiny-random": "a tiny random DreamLLM (writes noise; for tests and speed checks)",
}
# Built-in models that ship inside the package (trained weights); the others are built on first use.
PACKAGED_MODELS = Path(__file__).resolve().parent / "weights"


def is_builtin(name: str) -> bool:
    return name in BUILTIN


def builtin_model_dir(name: str) -> Path:
    """The checkpoint directory of a built-in model: the packaged one, or one written once (under a file lock:
    workers start together). Only writing one imports torch: naming a built-in model stays cheap."""
    packaged = PACKAGED_MODELS / name
    if name != "tiny-random":
        if not (packaged / "config.json").exists():
            raise CheckpointError(f"the built-in model '{name}' is missing from {packaged}: reinstall dreamgen")
        return packaged
    target = settings.home() / "models" / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            from .checkpoint import save_checkpoint
            from .tiny import build_tiny_model

            save_checkpoint(build_tiny_model(seed=0, name=name), target, safetensors=True)
            (target / ".complete").write_text("ok\n")
    return target
