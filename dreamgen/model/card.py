"""What a checkpoint says about itself, read from its small files without building the model (no torch).

    find_clip_config / find_diffusion_dir   which CLIP and SD configs a checkpoint's plugins_init_kwargs mean
    load_tokenizer                          its tokenizer (the same object the loaded model uses)
    ModelCard / read_model_card             context length, block lengths and token counts, for checking prompts

Released checkpoints name their CLIP tower and SD 2.1-base by hub id, or by a path on the machine that trained them
(`.../models--openai--clip-vit-large-patch14/snapshots/<hash>`); the model is recognised by its name anywhere in
that path, and its small config files ship in dreamgen/model/configs (a folder laid out the same way and named by
DREAMGEN_MODEL_CONFIGS is searched first). Configs kept beside the weights win: `clip_vision/config.json`, `unet/`,
`vae/`, `scheduler/`; the released checkpoints hold none.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..errors import CheckpointError

PACKAGED_CONFIGS = Path(__file__).parent / "configs"
# Models whose configs ship with dreamgen: the name as it appears in a hub id or a hub-cache folder -> folder.
PACKAGED = {"clip-vit-large-patch14": "clip-vit-large-patch14", "stable-diffusion-2-1-base": "sd21-base"}
BESIDE_CLIP = "clip_vision"  # a checkpoint's own CLIP config: <ckpt>/clip_vision/config.json
# Hub-cache folders spell "org/name" as "models--org--name": split on both so a name is matched whole
# ("clip-vit-large-patch14-336" is another model).
_NAME_PARTS = re.compile(r"/|--")


def names_model(name_or_path: str, model: str) -> bool:
    """True when `name_or_path` (a hub id, a hub-cache snapshot path, a local path) names `model`."""
    return model in _NAME_PARTS.split(str(name_or_path).replace("\\", "/"))


def _packaged(name_or_path: str) -> list[Path]:
    """The config folders of the model `name_or_path` names: DREAMGEN_MODEL_CONFIGS's, then the packaged one."""
    roots = [Path(given)] if (given := settings.MODEL_CONFIGS.given()) else []
    for model, folder in PACKAGED.items():
        if names_model(name_or_path, model):
            return [root / folder for root in roots + [PACKAGED_CONFIGS]]
    return []


def read_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def plugin(config: dict, name: str, ckpt: Path) -> dict:
    plugins = config.get("plugins_init_kwargs") or {}
    if name not in plugins:
        raise CheckpointError(f"{ckpt / 'config.json'}: plugins_init_kwargs has no '{name}' entry")
    return plugins[name]


def _inside(ckpt: Path, name: str) -> Path | None:
    """`ckpt/name` when `name` is a folder of the checkpoint (not the checkpoint itself, not outside it)."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return None
    folder = (ckpt / name).resolve()
    return folder if folder != ckpt.resolve() and folder.is_dir() else None


def find_clip_config(ckpt: Path, name_or_path: str) -> dict:
    """The vision tower's config as a dict: clip_vision/config.json beside the weights, else the folder the
    plugin names inside the checkpoint, else the packaged config of the model its name names."""
    candidates = [ckpt / BESIDE_CLIP / "config.json"]
    inside = _inside(ckpt, name_or_path)
    if inside is not None:
        candidates.append(inside / "config.json")
    candidates += [folder / "config.json" for folder in _packaged(name_or_path)]
    for path in candidates:
        if path.exists():
            config = read_json(path)
            # a full CLIPConfig (as the hub's snapshot has it) holds the tower's config under vision_config
            return config.get("vision_config", config) if config.get("model_type") == "clip" else config
    raise CheckpointError(f"{ckpt}: vision tower '{name_or_path}' is not packaged with dreamgen; "
                          f"put its config.json in {ckpt / BESIDE_CLIP}/")


def find_diffusion_dir(ckpt: Path, name_or_path: str) -> Path:
    """The folder holding unet/, vae/ and scheduler/ configs: the checkpoint's own, a folder of it the plugin
    names, or the packaged SD 2.1-base configs when its name names them."""
    inside = _inside(ckpt, name_or_path)
    for folder in (ckpt, inside, *_packaged(name_or_path)):
        if folder is not None and (folder / "unet" / "config.json").exists():
            return folder
    raise CheckpointError(f"{ckpt}: diffusion head '{name_or_path}' is not packaged with dreamgen; put its "
                          f"unet/config.json, vae/config.json and scheduler/scheduler_config.json in {ckpt}/")


# ---------------------------------------------------------------------------------------------- the tokenizer
def load_tokenizer(ckpt: Path):
    """The checkpoint's tokenizer. The classes released checkpoints name are imported directly: AutoTokenizer
    would import torch, which checking a prompt file does not need."""
    config_path = ckpt / "tokenizer_config.json"
    if not config_path.exists() and not (ckpt / "tokenizer.json").exists():
        raise CheckpointError(f"{ckpt}: missing tokenizer files (tokenizer.json or tokenizer.model + "
                              "tokenizer_config.json)")
    import transformers

    name = read_json(config_path).get("tokenizer_class") if config_path.exists() else None
    classes = {"LlamaTokenizer": "LlamaTokenizer", "LlamaTokenizerFast": "LlamaTokenizer",
               "PreTrainedTokenizerFast": "PreTrainedTokenizerFast", "TokenizersBackend": "PreTrainedTokenizerFast"}
    if name is None and (ckpt / "tokenizer.json").exists():
        name = "PreTrainedTokenizerFast"
    tokenizer_class = getattr(transformers, classes[name]) if name in classes else transformers.AutoTokenizer
    try:
        return tokenizer_class.from_pretrained(str(ckpt))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: the tokenizer does not load: {e}") from None


def count_tokens(tokenizer, text: str) -> int:
    """How many tokens `text` is as the generator feeds it: no bos, special tokens spelled in it split."""
    if not text:
        return 0
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer itself: what tokenizer(...) calls, ~20x faster one text at a time
        before, backend.encode_special_tokens = backend.encode_special_tokens, True
        try:
            return len(backend.encode(text, add_special_tokens=False).ids)
        finally:
            backend.encode_special_tokens = before
    return len(tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)


# ---------------------------------------------------------------------------------------------- the card
@dataclass
class ModelCard:
    """What checking a prompt needs to know of a model (dreamgen.prompts.context.ModelContext)."""

    path: Path
    max_positions: int  # the LLM's context: every token, dream block and image block takes positions in it
    num_dream_queries: int
    num_image_patches: int
    tokenizer: object

    @property
    def dream_block_len(self) -> int:
        return self.num_dream_queries + 2  # <dream_start> + queries + <dream_end>

    @property
    def image_block_len(self) -> int:
        return self.num_image_patches + 2  # <im_start> + patches + <im_end>

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)

    @classmethod
    def of(cls, model) -> "ModelCard":
        """The card of a loaded DreamLLM (its own tokenizer and sizes)."""
        return cls(path=Path(model.info.path or "."), max_positions=model.max_positions, tokenizer=model.tokenizer,
                   num_dream_queries=model.special.num_dream_queries,
                   num_image_patches=model.special.num_image_patches)


def read_model_card(ckpt: Path) -> ModelCard:
    config = read_json(ckpt / "config.json")
    if not isinstance(config.get("max_position_embeddings"), int):
        raise CheckpointError(f"{ckpt / 'config.json'}: no max_position_embeddings")
    clip_name = plugin(config, "clip_vision_embedding", ckpt).get("clip_vision_model_name_or_path", BESIDE_CLIP)
    clip = find_clip_config(ckpt, clip_name)
    image_size, patch_size = clip.get("image_size", 224), clip.get("patch_size", 32)
    return ModelCard(path=ckpt, max_positions=config["max_position_embeddings"],
                     num_dream_queries=plugin(config, "dream_embedding", ckpt).get("num_dream_queries", 64),
                     num_image_patches=(image_size // patch_size) ** 2, tokenizer=load_tokenizer(ckpt))
