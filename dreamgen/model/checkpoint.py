"""Load and save DreamLLM checkpoints in the released layout (.bin or .safetensors).

    config.json                  Llama fields + plugins_init_kwargs + special_tokens2ids_dict
    pytorch_model.bin            LLM: model.*, lm_head.weight   (or model.safetensors, or sharded with an index)
    clip_vision_embedding.bin    clip_vision_model.vision_model.*, projector.projector.{weight,bias}
    dream_embedding.bin          dream_queries
    stable_diffusion_head.bin    vae.*, unet.*, projector.projector.weight
    tokenizer files              tokenizer.model (+ added_tokens.json, ...) or tokenizer.json

Which CLIP and SD configs a checkpoint means is decided in card.py (packaged for the released ones, or beside the
weights); how weights are read is tensors.py (memory-mapped, no random init, tensor by tensor).
A missing part or key is an error naming the file and keys: never random weights.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from .. import settings
from ..errors import CheckpointError, ParamsError
from ..params import DEFAULT_FIELDS, DREAMGEN_DEFAULTS, REFERENCE_DEFAULTS, GenerationParams, ModelDefaults
from .card import BESIDE_CLIP, find_clip_config, find_diffusion_dir, load_tokenizer, plugin, read_json
from .device import check_device
from .dreamllm import CLIPVisionEmbedding, DreamEmbedding, DreamLLM, ModelInfo, StableDiffusionHead
from .special_tokens import RELEASED_IDS, SpecialTokens
from .tensors import LLM_SAFETENSORS, load_part, on_meta, open_part, released_name

log = logging.getLogger(__name__)

PART_FILES = ("pytorch_model", "clip_vision_embedding", "dream_embedding", "stable_diffusion_head")
PLUGIN_TARGET = "omni.models.dreamllm.modeling_plugins."
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULTS_KEY = "_dreamgen_defaults"  # what a checkpoint paints and writes with where a request says nothing
GUIDANCE_KEY = "_dreamgen_guidance"  # how dreamgen named a checkpoint's scale before it named all its defaults
NAME_KEY = "_dreamgen_model_name"
# config.json fields that are DreamLLM's or the saving library's, not LlamaConfig's
NOT_LLAMA = ("plugins_init_kwargs", "plugins_type", "special_tokens2ids_dict", "architectures", "model_type",
             "_name_or_path", "transformers_version", "torch_dtype", "dtype", NAME_KEY,
             GUIDANCE_KEY, DEFAULTS_KEY)


def parse_device(name: str) -> torch.device:
    check_device(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {name!r} asked for, but torch sees no CUDA device here")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> str:
    """The dtype `name` means on `device`: auto is bf16 on CUDA (what the released weights are), fp32 on the CPU
    (where bf16 matmuls are slow and fp16 ones missing)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {name!r}: use one of {', '.join(settings.DTYPES)}")
    return name


def parse_dtype(name: str, device: torch.device = torch.device("cpu")) -> torch.dtype:
    return DTYPES[resolve_dtype(name, device)]


# ---------------------------------------------------------------------------------------------- loading
def read_checkpoint(ckpt: Path, name: str | None = None, dtype: str = "auto", device: str = "cpu") -> DreamLLM:
    """The model in checkpoint directory `ckpt`; `name` is its id in documents (default: the config's, else the
    directory). `dtype` auto resolves per device; the resolved one is in `model.info.dtype`."""
    torch_device = parse_device(device)
    dtype = resolve_dtype(dtype, torch_device)
    weights_dtype = DTYPES[dtype]
    if torch_device.type == "cuda":  # TF32 matmuls and convolutions: the fp32 parts (the VAE) at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = read_json(ckpt / "config.json")
    tokenizer = load_tokenizer(ckpt)
    llm_config = _llm_config(config, tokenizer)
    clip_kwargs = plugin(config, "clip_vision_embedding", ckpt)
    dream_kwargs = plugin(config, "dream_embedding", ckpt)
    sd_kwargs = plugin(config, "stable_diffusion_head", ckpt)
    clip_config = CLIPVisionConfig.from_dict(find_clip_config(ckpt, clip_kwargs.get("clip_vision_model_name_or_path",
                                                                                    BESIDE_CLIP)))
    sd_dir = find_diffusion_dir(ckpt, sd_kwargs.get("diffusion_name_or_path", "."))

    # 1. the modules, parameters on the meta device: nothing initialised, no memory taken
    with on_meta():
        llm = LlamaForCausalLM(llm_config)
        vision = CLIPVisionEmbedding(CLIPVisionModel(clip_config), llm_config.hidden_size,
                                     select_layer=clip_kwargs.get("select_layer", -2))
        dream = DreamEmbedding(dream_kwargs.get("num_dream_queries", 64), llm_config.hidden_size)
        unet = UNet2DConditionModel.from_config(read_json(sd_dir / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(read_json(sd_dir / "vae" / "config.json"))
        head = StableDiffusionHead(unet, vae, llm_config.hidden_size,
                                   read_json(sd_dir / "scheduler" / "scheduler_config.json"))

    # 2. the weights, part by part, each tensor moved to its dtype and device as it is read
    as_weights = lambda _: weights_dtype  # noqa: E731
    tied = {"lm_head.weight": "model.embed_tokens.weight"} if llm_config.tie_word_embeddings else None
    load_part(llm, open_part(ckpt, "pytorch_model"), as_weights, torch_device, extra=tied)
    load_part(vision, open_part(ckpt, "clip_vision_embedding"), as_weights, torch_device)
    load_part(dream, open_part(ckpt, "dream_embedding"), as_weights, torch_device)  # never left random
    # the VAE stays fp32: it overflows in fp16, and it is a small share of the cost
    load_part(head, open_part(ckpt, "stable_diffusion_head"),
              lambda key: torch.float32 if key.startswith("vae.") else weights_dtype, torch_device)

    special = _special_tokens(config, tokenizer, ckpt, dream.dream_queries.shape[1], vision.num_patches)
    info = ModelInfo(name=str(config.get(NAME_KEY) or name or ckpt), path=str(ckpt),
                     dtype=dtype, device=str(torch_device), defaults=read_defaults(config, ckpt),
                     hash=weights_hash(ckpt))
    model = DreamLLM(llm, vision, dream, head, tokenizer, special, info, config.get("plugins_init_kwargs", {}))
    model.eval().requires_grad_(False)
    # The buffers no file holds (rotary frequencies, position ids) were built on the CPU in fp32.
    from diffusers.utils import logging as diffusers_logging
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # diffusers warns, needlessly, on every .to(dtype=...)
    try:
        for part in (llm, vision, dream, head.unet, head.projector):
            part.to(device=torch_device, dtype=weights_dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    head.vae.to(torch_device)
    return model


WEIGHT_SUFFIXES = (".safetensors", ".bin")
HASH_DIGITS = 10  # A1111's "Model hash": the first 10 hex digits of a sha256


def weights_hash(folder: Path) -> str | None:
    """A1111's "Model hash" of a checkpoint: a short sha256 of its weight files (each file's path in the folder,
    then its bytes, in path order). Computed once, when the model loads; documents carry it from there."""
    import hashlib

    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:HASH_DIGITS]


def read_defaults(config: dict, ckpt: Path) -> ModelDefaults:
    """What a checkpoint paints and writes with where a request leaves a parameter unset: the DEFAULTS_KEY object
    of its config.json (fields it leaves out are the reference's); else, for a checkpoint dreamgen wrote before
    it named them, dreamgen's defaults of then (with its GUIDANCE_KEY scale); else, as for the released
    checkpoints, the reference scripts' settings."""
    where = ckpt / "config.json"
    if DEFAULTS_KEY in config:
        given = config[DEFAULTS_KEY]
        if not isinstance(given, dict):
            raise CheckpointError(f"{where}: {DEFAULTS_KEY} must be an object of {', '.join(DEFAULT_FIELDS)}")
        unknown = sorted(set(given) - set(DEFAULT_FIELDS))
        if unknown:
            raise CheckpointError(f"{where}: {DEFAULTS_KEY} has unknown field(s) {', '.join(unknown)}; "
                                  f"it may name {', '.join(DEFAULT_FIELDS)}")
        defaults = ModelDefaults(**{**REFERENCE_DEFAULTS.to_dict(), **given})
    elif GUIDANCE_KEY in config or NAME_KEY in config:
        guidance = config.get(GUIDANCE_KEY, DREAMGEN_DEFAULTS.guidance)
        defaults = ModelDefaults(**{**DREAMGEN_DEFAULTS.to_dict(), "guidance": guidance})
    else:
        return REFERENCE_DEFAULTS
    for name, value in defaults.to_dict().items():  # the bounds a request's value has, named against the file
        field = f"{DEFAULTS_KEY}.{name}" if DEFAULTS_KEY in config else GUIDANCE_KEY
        if value is None:
            raise CheckpointError(f"{where}: {field} is null; name a value or leave it out")
        try:
            GenerationParams(**{name: value})
        except ParamsError as e:
            raise CheckpointError(f"{where}: {field} {e.rule}") from None
    return ModelDefaults(**{k: float(v) if k in ("guidance", "temperature", "top_p") else v
                            for k, v in defaults.to_dict().items()})


def _llm_config(config: dict, tokenizer) -> LlamaConfig:
    """LlamaConfig from config.json. bos/eos/pad come from the tokenizer: the released config carries Vicuna's
    wrong bos 0 / eos 1 / pad -1 (a pad of -1 would also make the last embedding row a padding row)."""
    fields = {k: v for k, v in config.items() if k not in NOT_LLAMA}
    fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    return LlamaConfig.from_dict(fields)


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
                    diffusion_name: str = ".", clip_name: str = BESIDE_CLIP) -> Path:
    """Write `model` in the released layout, with the released key names. Configs of the CLIP tower and SD head
    go beside the weights. Each file is written whole and then moved into place, so a process that has the
    checkpoint open meanwhile never sees half a file."""
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
    config[NAME_KEY] = model.info.name
    config[DEFAULTS_KEY] = model.info.defaults.to_dict()  # always: without it, NAME_KEY means dreamgen's old ones
    _write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True))

    parts = {"pytorch_model": model.llm, "clip_vision_embedding": model.vision,
             "dream_embedding": model.dream, "stable_diffusion_head": model.head}
    for part, module in parts.items():
        # clone(): the engine fuses q/k/v and gate/up into one tensor each, the modules' weights being views of
        # it; safetensors refuses tensors that share memory
        state = {released_name(k): v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        if safetensors:
            from safetensors.torch import save_file
            name = LLM_SAFETENSORS if part == "pytorch_model" else part
            _write_file(out / f"{name}.safetensors",
                        lambda path: save_file(state, str(path), metadata={"format": "pt"}))
        else:
            _write_file(out / f"{part}.bin", lambda path: torch.save(state, str(path)))

    if clip_name == BESIDE_CLIP:
        clip_cfg = model.vision.clip_vision_model.config.to_dict()
        _write_text(out / BESIDE_CLIP / "config.json", json.dumps(clip_cfg, indent=2, sort_keys=True, default=str))
    if diffusion_name == ".":
        for sub, cfg in (("unet", model.head.unet.config), ("vae", model.head.vae.config)):
            cfg = dict(cfg)
            if "_use_default_values" in cfg:  # diffusers keeps it as list(set): sorted, so a rerun writes the same bytes
                cfg["_use_default_values"] = sorted(cfg["_use_default_values"])
            _write_text(out / sub / "config.json", json.dumps(cfg, indent=2, sort_keys=True, default=list))
        _write_text(out / "scheduler" / "scheduler_config.json",
                    json.dumps(model.head.scheduler_config, indent=2, sort_keys=True))
    model.tokenizer.save_pretrained(str(out))
    return out


def _write_file(path: Path, write) -> None:
    """write(temporary path) in the same folder, then an atomic rename onto `path`: a model loaded from the old
    file keeps reading the old file, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    _write_file(path, lambda p: p.write_text(text))
