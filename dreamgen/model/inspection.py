"""What a checkpoint holds, read from its files without building the model."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from .checkpoint import PART_FILES, read_defaults
from .locate import resolve_checkpoint
from .special_tokens import RELEASED_IDS
from .tensors import CLIP_FLAT, CLIP_RELEASED, open_part

# The tensors worth showing by name; the rest are summarised by count.
NOTABLE = ("model.embed_tokens.weight", "lm_head.weight", "dream_queries", "projector.projector.weight",
           "projector.projector.bias", CLIP_RELEASED + "embeddings.patch_embedding.weight",
           CLIP_FLAT + "embeddings.patch_embedding.weight",  # as dreamgen wrote it before it wrote the released names
           "unet.conv_in.weight", "vae.decoder.conv_out.weight")


def inspect_checkpoint(name_or_path: str) -> dict:
    ckpt = resolve_checkpoint(name_or_path)
    config_path = ckpt / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"missing {config_path}")
    config = json.loads(config_path.read_text())
    parts = {}
    for part in PART_FILES:
        try:
            weights = open_part(ckpt, part)  # memory-mapped: reading names, shapes and dtypes reads no weights
        except CheckpointError as e:
            parts[part] = {"error": str(e)}
            continue
        keys = weights.keys()
        tensors = [weights.tensor(k) for k in keys]
        parts[part] = {
            "file": weights.name, "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors),
            "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in tensors}),
            "shapes": {k: list(weights.shape(k)) for k in NOTABLE if k in set(keys)},
        }
    flat = {}
    for key, value in (config.get("special_tokens2ids_dict") or {}).items():
        flat.update(value) if isinstance(value, dict) else flat.__setitem__(key, value)
    return {
        "path": str(ckpt),
        "llm": {k: config.get(k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                           "max_position_embeddings")},
        "plugins": {name: {k: v for k, v in kw.items() if k != "_target_"}
                    for name, kw in (config.get("plugins_init_kwargs") or {}).items()},
        "special_tokens": {t: flat.get(t) for t in RELEASED_IDS},
        "defaults": read_defaults(config, ckpt).to_dict(),  # what it paints and writes with where a request says nothing
        "parts": parts,
        "tokenizer": sorted(p.name for p in Path(ckpt).glob("tokenizer*")) + sorted(
            p.name for name in ("added_tokens.json", "special_tokens_map.json") for p in Path(ckpt).glob(name)),
    }
