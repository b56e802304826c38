"""Built-in model names: checkpoints dreamgen can make or find without a download."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

BUILTIN = {"tiny-random": "a tiny random DreamLLM (writes noise; for tests and speed checks)"}
DEFAULT_MODEL = "tiny-random"


def home() -> Path:
    return Path(os.environ.get("DREAMGEN_HOME", Path.home() / ".cache" / "dreamgen"))


def is_builtin(name: str) -> bool:
    return name in BUILTIN


def builtin_model_dir(name: str) -> Path:
    """The checkpoint directory of a built-in model, written once (under a file lock: workers start together)."""
    from .checkpoint import save_checkpoint
    from .tiny import build_tiny_model

    target = home() / "models" / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            save_checkpoint(build_tiny_model(seed=0, name=name), target, safetensors=True)
            (target / ".complete").write_text("ok\n")
    return target
