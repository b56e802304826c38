"""A checkpoint's weight files, loaded into modules tensor by tensor, in about the memory of the weights alone.

    on_meta()        build modules with their parameters on the meta device: no random init, no memory
    open_part()      one part's weights (a .bin pickle, a .safetensors file, or shards + index), memory-mapped
    load_part()      check the names and shapes strictly, then move each tensor to its dtype and device and
                     assign it to the module (load_state_dict(assign=True)), forgetting the file's pages behind it

So a 7B in bf16 takes its 14 GB of weights, not a random fp32 model beside a second copy (40 GB).

Names: the released files were saved with transformers 4.35, whose CLIPVisionModel nests everything under
`vision_model.`; transformers 5's has no such level. Files are read in either naming (dreamgen wrote the flat one
before it wrote the released one) and written in the released one (`released_name`).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import CheckpointError

LLM_SAFETENSORS = "model"  # transformers' name for a safetensors LLM
CLIP_RELEASED = "clip_vision_model.vision_model."  # transformers 4.35's CLIPVisionModel, as released
CLIP_FLAT = "clip_vision_model."  # transformers 5's
# Non-persistent buffers some versions saved: harmless extras in a file.
HARMLESS_EXTRAS = ("position_ids", "rotary_emb.inv_freq")


def released_name(key: str) -> str:
    """The name a module's key has in the released files."""
    if key.startswith(CLIP_FLAT) and not key.startswith(CLIP_RELEASED):
        return CLIP_RELEASED + key[len(CLIP_FLAT):]
    return key


def _module_name(file_key: str, module_keys) -> str | None:
    """The module key a file key loads into, in either CLIP naming; None if the module has no such key."""
    if file_key in module_keys:
        return file_key
    for written, other in ((CLIP_RELEASED, CLIP_FLAT), (CLIP_FLAT, CLIP_RELEASED)):
        if file_key.startswith(written) and other + file_key[len(written):] in module_keys:
            return other + file_key[len(written):]
    return None


# ---------------------------------------------------------------------------------------------- building
@contextlib.contextmanager
def on_meta():
    """Modules built inside get their parameters on the meta device (shapes only, nothing initialised), and keep
    their buffers real: the non-persistent ones (rotary frequencies, position ids) are never in a file."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


# ---------------------------------------------------------------------------------------------- reading
class WeightFile:
    """One file of tensors, memory-mapped: opening it reads no tensor data."""

    def __init__(self, path: Path):
        self.path, self.mapped = path, True
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            try:
                self._safe = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
            self._state = None
        else:
            self._safe = None
            try:
                try:
                    self._state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # a pickle of torch's legacy (pre-zip) format cannot be mapped: read it whole
                    self._state, self.mapped = torch.load(str(path), map_location="cpu", weights_only=True), False
            except Exception as e:  # not a torch file, truncated, or holding more than tensors
                raise CheckpointError(f"{path} is not a readable torch file: {type(e).__name__}: {e}") from None
            if not isinstance(self._state, dict):
                raise CheckpointError(f"{path} holds a {type(self._state).__name__}, not a state dict")

    def keys(self) -> list[str]:
        return list(self._safe.keys() if self._safe is not None else self._state)

    def shape(self, key: str) -> tuple:
        if self._safe is not None:
            return tuple(self._safe.get_slice(key).get_shape())
        return tuple(self._state[key].shape)

    def tensor(self, key: str) -> torch.Tensor:
        return self._safe.get_tensor(key) if self._safe is not None else self._state[key]


class Weights:
    """One part of a checkpoint: a file, or the shards an index names. `name` is what errors call it."""

    def __init__(self, ckpt: Path, name: str, files: list[Path]):
        self.ckpt, self.name = ckpt, name
        self.files = [WeightFile(f) for f in files]
        self._where = {key: f for f in self.files for key in f.keys()}

    @property
    def path(self) -> Path:
        return self.ckpt / self.name

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple:
        return self._where[key].shape(key)

    def tensor(self, key: str) -> torch.Tensor:
        return self._where[key].tensor(key)

    def items(self) -> Iterator[tuple[str, torch.Tensor, bool]]:
        """(key, tensor, mapped) file by file, so each file's mapping can be dropped once it is read."""
        for f in self.files:
            for key in f.keys():
                yield key, f.tensor(key), f.mapped


def open_part(ckpt: Path, part: str) -> Weights:
    """One part's weights, in whichever of the accepted forms the checkpoint has it."""
    names = [f"{part}.safetensors", f"{part}.bin"]
    if part == "pytorch_model":
        names = [f"{LLM_SAFETENSORS}.safetensors", "pytorch_model.bin"]
        for index in (f"{LLM_SAFETENSORS}.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (ckpt / index).exists():
                try:
                    weight_map = json.loads((ckpt / index).read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise CheckpointError(f"{ckpt / index} is not a shard index (no weight_map)") from None
                shards = sorted(set(weight_map.values()))
                for shard in shards:
                    if not (ckpt / shard).exists():
                        raise CheckpointError(f"{ckpt / index} names shard {shard}, which is missing")
                return Weights(ckpt, index, [ckpt / shard for shard in shards])
    for name in names:
        if (ckpt / name).exists():
            return Weights(ckpt, name, [ckpt / name])
    raise CheckpointError(f"{ckpt}: missing {' or '.join(names)} (the {part.replace('_', ' ')} part of the model)")


# ---------------------------------------------------------------------------------------------- loading
def load_part(module: nn.Module, weights: Weights, dtype_of: Callable[[str], torch.dtype], device: torch.device,
              extra: dict | None = None) -> None:
    """Load `weights` into `module` strictly: every key the module has must be in the file (in either CLIP
    naming), nothing else may be, and shapes must agree. `extra` supplies keys the file may lack (a tied head)."""
    expected = module.state_dict()  # meta tensors: names and shapes
    names, unexpected = {}, []
    for key in weights.keys():
        name = _module_name(key, expected)
        if name is None:
            if not key.endswith(HARMLESS_EXTRAS):
                unexpected.append(key)
        else:
            names[key] = name
    missing = sorted(set(expected) - set(names.values()) - set(extra or {}))
    if missing:
        shown = ", ".join(released_name(k) for k in missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{weights.path} lacks {len(missing)} key(s) the model needs: {shown}")
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:8])
        raise CheckpointError(f"{weights.path} has key(s) this model does not know: {shown}")
    for key, name in names.items():
        if weights.shape(key) != tuple(expected[name].shape):
            raise CheckpointError(f"{weights.path}: {key} has shape {weights.shape(key)}, "
                                  f"the config says {tuple(expected[name].shape)}")

    state = {}
    for key, tensor, mapped in weights.items():
        if key not in names:
            continue
        name = names[key]
        target = dtype_of(name) if tensor.is_floating_point() else tensor.dtype
        # A copy, always: a model must not live on a file's pages (a file rewritten under it would change it).
        state[name] = tensor.to(device=device, dtype=target, copy=True)
        if mapped:
            _forget_pages(tensor)
        del tensor
    for name, value in (extra or {}).items():
        state[name] = state.get(value, value) if isinstance(value, str) else value
    module.load_state_dict(state, strict=True, assign=True)
    still_meta = [n for n, p in module.named_parameters() if p.is_meta]
    if still_meta:  # cannot happen after the strict checks above; a model must never run on missing weights
        raise CheckpointError(f"{weights.path}: no weights for {', '.join(still_meta[:8])}")


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):  # not Linux/glibc: the pages stay until the file's mapping is dropped
    _madvise = None


def _forget_pages(tensor: torch.Tensor) -> None:
    """Let the kernel drop the file pages a memory-mapped tensor was read from (they were copied), so reading a
    part never holds the file's pages beside the copy. Only for mapped files, which are never written: touched
    again, the pages are read from the file again, so nothing is lost."""
    if _madvise is None or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    start = -(-start // _PAGE) * _PAGE  # whole pages inside the tensor only
    end = end // _PAGE * _PAGE
    if end > start:
        _madvise(start, end - start, _MADV_DONTNEED)
