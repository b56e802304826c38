"""Training configs: one YAML file per run, read into dataclasses and checked before anything is built.

    stage: igpt              # igpt (the whole DreamLLM) or vae (an image autoencoder from scratch)
    seed: 0
    output_dir: runs/my-model
    data: {train: data/train.jsonl, ...}
    ...                      # the stage's own sections, see IGPTConfig and VAEConfig

Relative paths are relative to the config file, so a config and its data can move together.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrainingError

STAGES = ("igpt", "vae")


@dataclass
class OptimConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off


@dataclass
class DataConfig:
    train: list = field(default_factory=list)  # JSONL files of interleaved documents
    chat: str = "vicuna"  # the chat format wrapped around a document's prompt (as generation does)
    train_on_prompt: bool = False  # whether the prompt's tokens are LM targets too
    max_length: int = 2048  # longer documents are skipped (and counted), never cut inside a block


@dataclass
class ArchitectureConfig:
    """Sizes of a model built from scratch (model.init: new). Same classes as the released model."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 688
    max_positions: int = 1024
    queries: int = 16
    clip_hidden: int = 64
    clip_layers: int = 2
    clip_heads: int = 4
    clip_image: int = 32
    clip_patch: int = 8
    cross_dim: int = 128
    unet_channels: tuple = (64, 128)
    unet_layers_per_block: int = 1
    unet_heads: int = 8
    unet_norm_groups: int = 8
    latent_size: int = 8  # sample_size of the UNet; images are latent_size x the VAE factor


@dataclass
class TokenizerConfig:
    """A tokenizer trained on the data's text (model.init: new)."""

    base_vocab: int = 1024
    merges_vocab: int = 800
    split_punctuation: bool = True


@dataclass
class ModelConfig:
    init: str = "new"  # "new", or a checkpoint directory / built-in name to fine-tune
    name: str = "dreamllm"  # the model's name in documents it writes
    vae: str | None = None  # a VAE folder (the vae stage's output) that replaces the model's VAE
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class FreezeConfig:
    """Which parts stay fixed. The reference freezes CLIP and Stable Diffusion throughout; a model trained from
    scratch must train its UNet (its VAE comes from the vae stage)."""

    llm: bool = False
    vision: bool = True  # the CLIP tower (its projector is `vision_projector`)
    vision_projector: bool = False
    queries: bool = False
    projector: bool = False  # the condition projector
    unet: bool = True
    vae: bool = True


@dataclass
class LossConfig:
    w_lm: float = 1.0  # the released weights: w_lm 1.0, w_vm 10.0
    w_vm: float = 10.0
    cfg_dropout: float = 0.1  # chance an image's condition is replaced by the unconditional one
    noise_samples: int = 1  # noised copies of each image per step: more diffusion signal per LLM forward
    w_readout: float = 0.0  # > 0: read labelled attributes back from each condition (training/readout.py)
    # next-token loss weight of single-token words, e.g. {small: 5}: a word the text must copy from the prompt
    # but that is one token in sixty gets its gradient raised; every other token keeps weight 1
    word_weights: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    """What every training stage has: its seed, its folder, how often it logs and saves, its threads."""

    stage: str = ""
    seed: int = 0
    output_dir: str = "runs/run"
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    threads: int = 0  # torch threads; 0 leaves torch's default


@dataclass
class IGPTConfig(RunConfig):
    stage: str = "igpt"
    output_dir: str = "runs/dreamllm"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    save_dtype: str = "fp32"  # fp16 halves the final checkpoint


@dataclass
class VAEArchitectureConfig:
    channels: tuple = (32, 64, 64, 64)  # one entry per level; factor 2 ** (levels - 1)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_groups: int = 8
    image_size: int = 64


@dataclass
class VAELossConfig:
    l1_weight: float = 1.0  # L1 keeps flat colours and edges sharper than MSE alone
    mse_weight: float = 1.0
    kl_weight: float = 1e-6  # small: enough to keep the latents bounded and smooth for diffusion
    # Extra weight of the pixels on and around a shape (far from the picture's background, grown by one pixel so
    # the outline's both sides count) in the L1 and MSE terms: each pixel weighs 1 + foreground_weight there, 1
    # elsewhere. A small shape is a small share of the picture, so a plain mean underweights its outline and
    # corners. 0 (the default) is the plain loss.
    foreground_weight: float = 0.0


@dataclass
class VAEDataConfig:
    train: list = field(default_factory=list)  # JSONL documents (their images) or folders of .png/.jpg
    crop: int = 0  # train on random crops of this side (a conv autoencoder is local; crops cost less); 0 = none


@dataclass
class VAEConfig(RunConfig):
    stage: str = "vae"
    output_dir: str = "runs/vae"
    init: str = "new"  # "new" or a VAE folder to go on from
    # Train the decoder alone: latents (and the scaling factor) stay exactly as they were, so a diffusion model
    # trained on them keeps working with the sharper decoder (how SD's improved VAE decoders were made).
    decoder_only: bool = False
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    architecture: VAEArchitectureConfig = field(default_factory=VAEArchitectureConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


# ---------------------------------------------------------------------------------------------- reading
def _build(cls, values: dict, where: str):
    """A dataclass from a dict, recursing into dataclass fields; unknown keys are errors naming their place."""
    if not isinstance(values, dict):
        raise TrainingError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TrainingError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
            else fields[name].default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        elif isinstance(default, list):
            kwargs[name] = list(value) if isinstance(value, (list, tuple)) else [value]
        elif isinstance(default, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                kwargs[name] = float(value)  # YAML reads 1e-3 as a string
            except ValueError:
                raise TrainingError(f"{where}.{name}: {value!r} is not a number") from None
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _resolve(path: str | None, base: Path) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def load_config(path: str | Path, overrides: dict | None = None) -> IGPTConfig | VAEConfig:
    """Read and check a training config; `overrides` are dotted keys, e.g. {"optim.steps": 10}."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no training config at {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TrainingError(f"{path}: not valid YAML: {e}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    stage = raw.get("stage", "igpt")
    if stage not in STAGES:
        raise TrainingError(f"{path}: stage {stage!r} is not one of {', '.join(STAGES)}")
    config = _build(IGPTConfig if stage == "igpt" else VAEConfig, raw, str(path))
    base = path.resolve().parent
    config.output_dir = _resolve(config.output_dir, base)
    config.data.train = [_resolve(p, base) for p in config.data.train]
    if isinstance(config, IGPTConfig):
        if config.model.init != "new" and (base / config.model.init).exists():
            config.model.init = _resolve(config.model.init, base)
        config.model.vae = _resolve(config.model.vae, base)
    elif config.init != "new":
        config.init = _resolve(config.init, base)
    if isinstance(config, VAEConfig) and config.decoder_only and config.init == "new":
        raise TrainingError(f"{path}: decoder_only needs init: a trained VAE folder")
    check_config(config, str(path))
    return config


def check_config(config, where: str = "config") -> None:
    """One error per bad value, naming it."""
    def need(ok: bool, key: str, rule: str):
        if not ok:
            raise TrainingError(f"{where}: {key} {rule}")

    o = config.optim
    need(o.steps >= 1, "optim.steps", f"must be >= 1 (got {o.steps})")
    need(o.batch_size >= 1, "optim.batch_size", f"must be >= 1 (got {o.batch_size})")
    need(o.lr > 0, "optim.lr", f"must be > 0 (got {o.lr})")
    need(0 <= o.warmup_steps, "optim.warmup_steps", "must be >= 0")
    need(config.save_every >= 1, "save_every", "must be >= 1")
    need(len(config.data.train) > 0, "data.train", "names no training file")
    for p in config.data.train:
        need(Path(p).exists(), "data.train", f"names {p}, which does not exist")
    if isinstance(config, IGPTConfig):
        loss = config.loss
        need(loss.w_lm >= 0 and loss.w_vm >= 0, "loss.w_lm/w_vm", "must be >= 0")
        need(0 <= loss.cfg_dropout < 1, "loss.cfg_dropout", f"must be in [0, 1) (got {loss.cfg_dropout})")
        need(loss.noise_samples >= 1, "loss.noise_samples", "must be >= 1")
        need(isinstance(loss.word_weights, dict), "loss.word_weights", "must map words to weights")
        for word, weight in loss.word_weights.items():
            # YAML reads a bare on/off/yes/no key as a boolean: it would weigh the token " True"
            need(isinstance(word, str), f"loss.word_weights.{word}", "must be a word; quote on/off/yes/no in YAML")
            need(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0,
                 f"loss.word_weights.{word}", f"must be a number > 0 (got {weight!r})")
        need(config.save_dtype in ("fp32", "fp16"), "save_dtype", "must be fp32 or fp16")
        from ..prompts.templates import CHAT_TEMPLATES
        need(config.data.chat in CHAT_TEMPLATES, "data.chat", f"must be one of {', '.join(CHAT_TEMPLATES)}")
        need(config.model.vae is None or Path(config.model.vae).is_dir(), "model.vae",
             f"names {config.model.vae}, which is not a folder")
    else:
        loss = config.loss
        need(min(loss.l1_weight, loss.mse_weight, loss.kl_weight, loss.foreground_weight) >= 0,
             "loss.l1_weight/mse_weight/kl_weight/foreground_weight", "must be >= 0")
