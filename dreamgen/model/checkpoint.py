"""Load and save DreamLLM checkpoints in the released layout (.bin or .safetensors).

    config.json                  Llama fields + plugins_init_kwargs + special_tokens2ids_dict
    pytorch_model.bin            LLM: model.*, lm_head.weight   (or model.safetensors, or sharded with an index)
    clip_vision_embedding.bin    clip_vision_model.vision_model.*, projector.projector.{weight,bias}
    dream_embedding.bin          dream_queries
    stable_diffusion_head.bin    vae.*, unet.*, projector.projector.weight
    tokenizer files              loaded with AutoTokenizer.from_pretrained(checkpoint_dir)

Released checkpoints name their CLIP tower and SD 2.1-base by hub id; their small config files ship in
dreamgen/configs so loading needs nothing but the checkpoint. Other checkpoints keep them beside the weights:
clip_vision/config.json, unet/config.json, vae/config.json, scheduler/scheduler_config.json.
A missing part is an error naming the file and keys: never random weights.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from .. import settings
from ..errors import CheckpointError
from .dreamllm import CLIPVisionEmbedding, DreamEmbedding, DreamLLM, ModelInfo, StableDiffusionHead
from .special_tokens import RELEASED_IDS, SpecialTokens

log = logging.getLogger(__name__)

PACKAGED_CONFIGS = Path(__file__).parent / "configs"
PART_FILES = ("pytorch_model", "clip_vision_embedding", "dream_embedding", "stable_diffusion_head")
LLM_SAFETENSORS = "model"  # transformers' name for a safetensors LLM
PLUGIN_TARGET = "omni.models.dreamllm.modeling_plugins."
DTYPES = dict(zip(settings.DTYPES, (torch.float32, torch.float16, torch.bfloat16)))


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def parse_device(name: str) -> torch.device:
    if name != "cpu" and not (name == "cuda" or name.startswith("cuda:")):
        raise CheckpointError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {name!r} asked for, but torch sees no CUDA device here")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------- reading weights
def _read_state_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def read_part(ckpt: Path, part: str) -> tuple[dict, str]:
    """Return (state dict, file name) of one part, in whichever of the accepted forms the checkpoint has it."""
    names = [f"{part}.safetensors", f"{part}.bin"]
    if part == "pytorch_model":
        names = [f"{LLM_SAFETENSORS}.safetensors", "pytorch_model.bin"]
        for index in (f"{LLM_SAFETENSORS}.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (ckpt / index).exists():
                weight_map = json.loads((ckpt / index).read_text())["weight_map"]
                state = {}
                for shard in sorted(set(weight_map.values())):
                    if not (ckpt / shard).exists():
                        raise CheckpointError(f"{ckpt / index} names shard {shard}, which is missing")
                    state.update(_read_state_file(ckpt / shard))
                return state, index
    for name in names:
        if (ckpt / name).exists():
            return _read_state_file(ckpt / name), name
    raise CheckpointError(f"{ckpt}: missing {' or '.join(names)} (the {part.replace('_', ' ')} part of the model)")


def _load_into(module: torch.nn.Module, state: dict, ckpt: Path, file: str, prefix: str = "") -> None:
    """Load strictly: every key the module has must be in the file, and nothing else may be."""
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if prefix else state
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    # Non-persistent buffers some versions saved (e.g. position_ids) are harmless extras.
    unexpected = [k for k in unexpected if not k.endswith(("position_ids", "rotary_emb.inv_freq"))]
    if missing:
        shown = ", ".join(prefix + k for k in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{ckpt / file} lacks {len(missing)} key(s) the model needs: {shown}")
    if unexpected:
        shown = ", ".join(prefix + k for k in unexpected[:8])
        raise CheckpointError(f"{ckpt / file} has key(s) this model does not know: {shown}")
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(module.state_dict()[key].shape):
            raise CheckpointError(f"{ckpt / file}: {prefix + key} has shape {tuple(value.shape)}, "
                                  f"the config says {tuple(module.state_dict()[key].shape)}")
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)


# ---------------------------------------------------------------------------------------------- configs
def _plugin(config: dict, name: str, ckpt: Path) -> dict:
    plugins = config.get("plugins_init_kwargs") or {}
    if name not in plugins:
        raise CheckpointError(f"{ckpt / 'config.json'}: plugins_init_kwargs has no '{name}' entry")
    return plugins[name]


def _clip_config(ckpt: Path, name_or_path: str) -> CLIPVisionConfig:
    local = ckpt / name_or_path / "config.json"
    if (ckpt / name_or_path).resolve() != ckpt.resolve() and local.exists():
        return CLIPVisionConfig.from_dict(json.loads(local.read_text()))
    if name_or_path.rstrip("/").endswith("clip-vit-large-patch14"):
        packaged = json.loads((PACKAGED_CONFIGS / "clip-vit-large-patch14" / "config.json").read_text())
        return CLIPVisionConfig.from_dict(packaged)
    raise CheckpointError(f"{ckpt}: vision tower '{name_or_path}' is not packaged with dreamgen; "
                          f"put its config.json in {ckpt / name_or_path}/")


def _diffusion_dir(ckpt: Path, name_or_path: str) -> Path:
    if (ckpt / "unet" / "config.json").exists():
        return ckpt
    if name_or_path.rstrip("/").endswith("stable-diffusion-2-1-base"):
        return PACKAGED_CONFIGS / "sd21-base"
    raise CheckpointError(f"{ckpt}: diffusion head '{name_or_path}' is not packaged with dreamgen; put its "
                          f"unet/config.json, vae/config.json and scheduler/scheduler_config.json in {ckpt}/")


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


# ---------------------------------------------------------------------------------------------- loading
def read_checkpoint(ckpt: Path, name: str | None = None, dtype: str = "fp32", device: str = "cpu") -> DreamLLM:
    """The model in checkpoint directory `ckpt`; `name` is its id in documents (default: the config's, else the
    directory)."""
    torch_dtype, torch_device = parse_dtype(dtype), parse_device(device)
    config = _read_json(ckpt / "config.json")
    if not (ckpt / "tokenizer_config.json").exists() and not (ckpt / "tokenizer.json").exists():
        raise CheckpointError(f"{ckpt}: missing tokenizer files (tokenizer.json or tokenizer.model + tokenizer_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))

    # 1. the language model
    llm_config = LlamaConfig.from_dict({k: v for k, v in config.items()
                                        if k not in ("plugins_init_kwargs", "special_tokens2ids_dict", "architectures")})
    llm = LlamaForCausalLM(llm_config)
    state, file = read_part(ckpt, "pytorch_model")
    if "lm_head.weight" not in state and llm_config.tie_word_embeddings:
        state["lm_head.weight"] = state.get("model.embed_tokens.weight")
    _load_into(llm, state, ckpt, file)

    # 2. the vision encoder and its projector (comprehension)
    clip_kwargs = _plugin(config, "clip_vision_embedding", ckpt)
    clip_config = _clip_config(ckpt, clip_kwargs.get("clip_vision_model_name_or_path", "clip_vision"))
    vision = CLIPVisionEmbedding(CLIPVisionModel(clip_config), llm_config.hidden_size,
                                 select_layer=clip_kwargs.get("select_layer", -2))
    state, file = read_part(ckpt, "clip_vision_embedding")
    _load_into(vision, state, ckpt, file)

    # 3. the dream queries: never left random
    dream_kwargs = _plugin(config, "dream_embedding", ckpt)
    dream = DreamEmbedding(dream_kwargs.get("num_dream_queries", 64), llm_config.hidden_size)
    state, file = read_part(ckpt, "dream_embedding")
    _load_into(dream, state, ckpt, file)

    # 4. the diffusion head
    sd_kwargs = _plugin(config, "stable_diffusion_head", ckpt)
    sd_dir = _diffusion_dir(ckpt, sd_kwargs.get("diffusion_name_or_path", "."))
    unet = UNet2DConditionModel.from_config(_read_json(sd_dir / "unet" / "config.json"))
    vae = AutoencoderKL.from_config(_read_json(sd_dir / "vae" / "config.json"))
    head = StableDiffusionHead(unet, vae, llm_config.hidden_size, _read_json(sd_dir / "scheduler" / "scheduler_config.json"))
    state, file = read_part(ckpt, "stable_diffusion_head")
    _load_into(head, state, ckpt, file)

    special = _special_tokens(config, tokenizer, ckpt, dream.dream_queries.shape[1], vision.num_patches)
    info = ModelInfo(name=str(config.get("_dreamgen_model_name") or name or ckpt), path=str(ckpt),
                     dtype=dtype, device=str(torch_device))
    model = DreamLLM(llm, vision, dream, head, tokenizer, special, info, config.get("plugins_init_kwargs", {}))
    model.eval().requires_grad_(False)
    # Weights are built in fp32; cast only when asked (diffusers warns, needlessly, on every .to(dtype=...)).
    from diffusers.utils import logging as diffusers_logging
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        for part in (llm, vision, dream, head.unet, head.projector):
            part.to(device=torch_device, dtype=torch_dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    head.vae.to(torch_device)  # stays fp32: the VAE overflows in fp16, and it is a small share of the cost
    return model


def _special_tokens(config: dict, tokenizer, ckpt: Path, num_queries: int, num_patches: int) -> SpecialTokens:
    ids = dict(config.get("special_tokens2ids_dict") or {})
    flat = {}
    for key, value in ids.items():
        flat.update(value) if isinstance(value, dict) else flat.__setitem__(key, value)
    for token in RELEASED_IDS:
        tok_id = tokenizer.convert_tokens_to_ids(token)
        if token not in flat:
            if tok_id is None or tok_id == tokenizer.unk_token_id:
                raise CheckpointError(f"{ckpt}: special token {token} is neither in special_tokens2ids_dict nor in the tokenizer")
            flat[token] = tok_id
        elif tok_id != flat[token]:
            raise CheckpointError(f"{ckpt}: config.json says {token} is {flat[token]}, the tokenizer says {tok_id}")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise CheckpointError(f"{ckpt}: the tokenizer defines no bos/eos token")
    return SpecialTokens.from_ids(flat, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                                  num_dream_queries=num_queries, num_image_patches=num_patches)


# ---------------------------------------------------------------------------------------------- saving
def save_checkpoint(model: DreamLLM, out_dir: str | os.PathLike, safetensors: bool = False,
                    diffusion_name: str = ".", clip_name: str = "clip_vision") -> Path:
    """Write `model` in the released layout. Configs of the CLIP tower and SD head go beside the weights."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.llm.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "output_attentions"):
        config.pop(key, None)
    config["architectures"] = ["DreamLLMForCausalMLM"]
    config["plugins_init_kwargs"] = {
        "clip_vision_embedding": {"_target_": PLUGIN_TARGET + "CLIPVisionEmbedding", "clip_vision_model_name_or_path": clip_name,
                                  "select_layer": model.vision.select_layer, "embed_hidden_size": model.hidden_size,
                                  "projector_type": "linear"},
        "dream_embedding": {"_target_": PLUGIN_TARGET + "DreamEmbedding",
                            "num_dream_queries": model.special.num_dream_queries, "embed_hidden_size": model.hidden_size},
        "stable_diffusion_head": {"_target_": PLUGIN_TARGET + "StableDiffusionHead", "diffusion_name_or_path": diffusion_name,
                                  "embed_hidden_size": model.hidden_size, "projector_type": "linear"},
    }
    s = model.special
    config["special_tokens2ids_dict"] = {
        "[PAD]": s.pad, "additional_special_tokens": {
            "<im_start>": s.im_start, "<dream_end>": s.dream_end, "<dream_start>": s.dream_start,
            "<im_patch>": s.im_patch, "<im_end>": s.im_end,
            "<image>": model.tokenizer.convert_tokens_to_ids("<image>"),
            "<dream>": model.tokenizer.convert_tokens_to_ids("<dream>")}}
    config.setdefault("loss_weight_lm", 1.0)
    config.setdefault("loss_weight_vm", 10.0)
    config["_dreamgen_model_name"] = model.info.name
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    parts = {"pytorch_model": model.llm, "clip_vision_embedding": model.vision,
             "dream_embedding": model.dream, "stable_diffusion_head": model.head}
    for part, module in parts.items():
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        if safetensors:
            from safetensors.torch import save_file
            name = LLM_SAFETENSORS if part == "pytorch_model" else part
            save_file(state, str(out / f"{name}.safetensors"), metadata={"format": "pt"})
        else:
            torch.save(state, str(out / f"{part}.bin"))

    if clip_name == "clip_vision":
        (out / "clip_vision").mkdir(exist_ok=True)
        clip_cfg = model.vision.clip_vision_model.config.to_dict()
        (out / "clip_vision" / "config.json").write_text(json.dumps(clip_cfg, indent=2, sort_keys=True, default=str))
    if diffusion_name == ".":
        for sub, cfg in (("unet", model.head.unet.config), ("vae", model.head.vae.config)):
            (out / sub).mkdir(exist_ok=True)
            (out / sub / "config.json").write_text(json.dumps(dict(cfg), indent=2, sort_keys=True, default=list))
        (out / "scheduler").mkdir(exist_ok=True)
        (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.head.scheduler_config, indent=2, sort_keys=True))
    model.tokenizer.save_pretrained(str(out))
    return out
