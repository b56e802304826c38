"""Per-document generation parameters, checked early and loudly (one error per bad value, naming it)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ParamsError, preview

SCHEDULERS = ("ddpm", "ddim", "dpm-solver")
# Stable Diffusion's schedule has 1000 training timesteps, and its config an offset of 1 (steps_offset): the
# most steps ddpm, ddim and dpm-solver can take over it is 999 (one more indexes past the schedule's end, and
# dpm-solver's last step then divides by zero). Every model we load keeps that schedule; the diffusion loop
# checks a model's own limit too (generation.diffusion.max_steps).
SD_TRAIN_TIMESTEPS, SD_STEPS_OFFSET = 1000, 1
MAX_STEPS = SD_TRAIN_TIMESTEPS - SD_STEPS_OFFSET
CHAT_FORMATS = ("vicuna", "none")


@dataclass(frozen=True)
class ModelDefaults:
    """What a model paints and writes with where a request leaves a parameter unset (ModelInfo.defaults): a
    checkpoint names its own in config.json (checkpoint.DEFAULTS_KEY), the released ones name none."""

    scheduler: str
    steps: int
    guidance: float
    temperature: float
    top_p: float
    max_new_tokens: int
    cache_interval: int = 1  # 1: the whole UNet every step (the reference's); N: the deep blocks every Nth only
    cache_until: float = 1.0  # the share of the steps, from the first, that may reuse the deep features
    guidance_until: float = 1.0  # the share of the steps, from the first, that are guided (1: all, the reference's)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The reference scripts' settings (DreamLLM's released sampling scripts): what a checkpoint that names no defaults
# of its own, as the released ones, paints and writes with.
REFERENCE_DEFAULTS = ModelDefaults(scheduler="ddpm", steps=150, guidance=3.5, temperature=0.2, top_p=1.0,
                                   max_new_tokens=1024)
# What dreamgen painted and wrote with before checkpoints named their defaults: the models it builds (tiny-random,
# the test models, a model trained from scratch) and the checkpoints it wrote then keep them, so their documents
# do not change.
DREAMGEN_DEFAULTS = ModelDefaults(scheduler="ddpm", steps=50, guidance=7.5, temperature=0.0, top_p=1.0,
                                  max_new_tokens=256)
DEFAULT_FIELDS = tuple(f.name for f in dataclasses.fields(ModelDefaults))
# `--fast`: DDPM at 25 steps, the UNet's deep features reused every other step throughout, guided through the first
# half of the steps only: about a quarter of DDPM 50's UNet work a picture at 512 px (what it costs on the shapes
# model's eval: docs/pictures.md). Every painting parameter is named, so no model's own default makes it slower or
# faster; parameters given explicitly win.
FAST = {"scheduler": "ddpm", "steps": 25, "cache_interval": 2, "cache_until": 1.0, "guidance_until": 0.5}


@dataclass(frozen=True)
class GenerationParams:
    """What decides one document, besides the model and the prompt.

    The fields of ModelDefaults left None (unset) take the model's own (ModelInfo.defaults: the ones its
    checkpoint names, else the reference scripts' DDPM, 150 steps, guidance 3.5, temperature 0.2, top_p 1.0, 1024
    new tokens): a small model trained here may paint best at another scale. `resolved` fills them in; a
    document's params are always the resolved ones.
    `cache_interval` N > 1 runs the UNet's deep blocks every Nth step only and reuses their features between
    (generation/deepcache.py); unset, the model's own (1 unless its checkpoint names another). `cache_until` ends
    the reuse after that share of the steps (the late, low-noise steps are where a stale deep feature costs the
    most); `guidance_until` paints the steps after that share unguided, the conditional row alone (guidance shapes
    a picture while it is noisy; late steps only sharpen it). Both are 1 (off) unless the model names others.
    `template` names a prompt template of templates/prompts/ (how a topic becomes an instruction); `chat` the
    chat format around it (vicuna_v1.1 for the released chat models, or none).
    `image_size=None` means the model's native size (sample_size x VAE factor).
    """

    seed: int = 0
    temperature: float | None = None  # 0 = greedy
    top_p: float | None = None
    max_new_tokens: int | None = None
    max_images: int = 4
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    cache_interval: int | None = None  # 1: every denoising step runs the whole UNet; N: every Nth, the deep
    # features reused between
    cache_until: float | None = None  # the cache works through this share of the steps; full passes after
    guidance_until: float | None = None  # guided through this share of the steps; the rest unguided (one UNet row)
    image_size: int | None = None
    negative_prompt: str = ""
    template: str = "none"
    chat: str = "vicuna"

    def __post_init__(self):
        check_params(self)

    def replace(self, **changes) -> "GenerationParams":
        return dataclasses.replace(self, **changes)

    def resolved(self, defaults: ModelDefaults) -> "GenerationParams":
        """These params with every unset one given the model's own (ModelInfo.defaults), as they are used."""
        unset = {name: getattr(defaults, name) for name in DEFAULT_FIELDS if getattr(self, name) is None}
        return self.replace(**unset) if unset else self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParamsError(f"unknown parameter(s): {', '.join(unknown)}")
        return cls(**data)


PARAM_NAMES = tuple(f.name for f in dataclasses.fields(GenerationParams))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_params(p: GenerationParams) -> None:
    def need(ok, name, rule):
        if not ok:
            shown = preview(getattr(p, name))  # bounded: the value may be a 5,000-character string
            raise ParamsError(f"{name}={shown}: {rule}", name=name, rule=f"{rule}, got {shown}")

    need(_is_int(p.seed) and 0 <= p.seed < 2**63, "seed", "must be an integer in [0, 2^63)")
    # None (unset) is the model's own for the ModelDefaults fields: GenerationParams.resolved fills them in
    need(p.temperature is None or (_is_number(p.temperature) and 0 <= p.temperature <= 10), "temperature",
         "must be a number in [0, 10]")
    need(p.top_p is None or (_is_number(p.top_p) and 0 < p.top_p <= 1), "top_p", "must be a number in (0, 1]")
    need(p.max_new_tokens is None or (_is_int(p.max_new_tokens) and 1 <= p.max_new_tokens <= 32768), "max_new_tokens",
         "must be an integer in [1, 32768]")
    need(_is_int(p.max_images) and 0 <= p.max_images <= 64, "max_images", "must be an integer in [0, 64]")
    need(p.steps is None or (_is_int(p.steps) and 1 <= p.steps <= MAX_STEPS), "steps",
         f"must be an integer in [1, {MAX_STEPS}]")
    need(p.guidance is None or (_is_number(p.guidance) and 0 <= p.guidance <= 50), "guidance",
         "must be a number in [0, 50]")
    need(p.scheduler is None or p.scheduler in SCHEDULERS, "scheduler", f"must be one of {', '.join(SCHEDULERS)}")
    need(p.cache_interval is None or (_is_int(p.cache_interval) and 1 <= p.cache_interval <= MAX_STEPS),
         "cache_interval",
         f"must be an integer in [1, {MAX_STEPS}] (1 = no cache)")
    for name in ("cache_until", "guidance_until"):
        value = getattr(p, name)
        need(value is None or (_is_number(value) and 0 < value <= 1), name,
             "must be a number in (0, 1] (a share of the denoising steps)")
    need(p.image_size is None or (_is_int(p.image_size) and 8 <= p.image_size <= 2048),
         "image_size", "must be an integer in [8, 2048] (or unset for the model's size)")
    need(isinstance(p.negative_prompt, str), "negative_prompt", "must be a string")
    need(isinstance(p.template, str) and p.template != "", "template", "must be a template name")
    need(p.chat in CHAT_FORMATS, "chat", f"must be one of {', '.join(CHAT_FORMATS)}")
