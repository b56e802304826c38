"""DreamLLM composed of the transformers and diffusers classes a released checkpoint loads into.

    llm        LlamaForCausalLM                      state dict `model.*`, `lm_head.weight`
    vision     CLIPVisionEmbedding                   `clip_vision_model.vision_model.*`, `projector.projector.{weight,bias}`
    dream      DreamEmbedding                        `dream_queries` (1, Q, H)
    head       StableDiffusionHead                   `vae.*`, `unet.*`, `projector.projector.weight`

Module and parameter names follow the released checkpoint files, so their state dicts load as they are.
The model only computes; the generation loop (dreamgen.generation) decides what runs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPVisionModel, LlamaForCausalLM

from ..params import DREAMGEN_DEFAULTS, ModelDefaults
from .special_tokens import SpecialTokens

log = logging.getLogger(__name__)

# CLIP's normalisation (openai/clip-vit-large-patch14 preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Projector(nn.Module):
    """A linear projector; wrapped so its keys read `projector.projector.*` as in the released files."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.projector = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x):
        return self.projector(x)


class CLIPVisionEmbedding(nn.Module):
    """Comprehension path: CLIP vision tower, hidden_states[select_layer] without CLS, projected to the LLM width."""

    def __init__(self, clip_vision_model: CLIPVisionModel, embed_hidden_size: int, select_layer: int = -2):
        super().__init__()
        self.clip_vision_model = clip_vision_model
        self.projector = Projector(clip_vision_model.config.hidden_size, embed_hidden_size, bias=True)
        self.select_layer = select_layer

    @property
    def image_size(self) -> int:
        return self.clip_vision_model.config.image_size

    @property
    def num_patches(self) -> int:
        cfg = self.clip_vision_model.config
        return (cfg.image_size // cfg.patch_size) ** 2

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) in [0, 1] -> CLIP pixels (N, 3, S, S): shortest side to S (bicubic), centre crop, normalise."""
        size = self.image_size
        _, _, h, w = images.shape
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top:top + size, left:left + size].clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP pixels (N, 3, S, S) -> image embeddings (N, P, H)."""
        out = self.clip_vision_model(pixel_values.to(self.projector.projector.weight.dtype), output_hidden_states=True)
        features = out.hidden_states[self.select_layer][:, 1:]  # (N, P, C): CLS dropped
        return self.projector(features)


class DreamEmbedding(nn.Module):
    """The learned dream queries that stand in for the Q `<im_patch>` embeddings of a dream block."""

    def __init__(self, num_dream_queries: int, embed_hidden_size: int):
        super().__init__()
        self.dream_queries = nn.Parameter(torch.zeros(1, num_dream_queries, embed_hidden_size))

    def forward(self, batch_size: int = 1) -> torch.Tensor:
        return self.dream_queries.expand(batch_size, -1, -1)  # (B, Q, H)


class StableDiffusionHead(nn.Module):
    """The creation path: a Stable Diffusion UNet + VAE, conditioned on projected dream-query states."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, embed_hidden_size: int, scheduler_config: dict):
        super().__init__()
        self.vae = vae
        self.unet = unet
        self.projector = Projector(embed_hidden_size, unet.config.cross_attention_dim, bias=False)
        self.scheduler_config = dict(scheduler_config)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        """Post-norm hidden states at the query positions (B, Q, H) -> UNet condition (B, Q, cross_dim)."""
        return self.projector(query_states)


@dataclass
class ModelInfo:
    """Where a model came from: its id goes into every document's provenance and id. `defaults` are what it
    paints and writes with where a request leaves a parameter unset (checkpoint.read_defaults: the released
    checkpoints take the reference scripts' settings); a model built here keeps dreamgen's."""

    name: str
    path: str | None = None
    dtype: str = "fp32"
    device: str = "cpu"
    defaults: ModelDefaults = DREAMGEN_DEFAULTS
    hash: str | None = None  # short sha256 of the checkpoint's weight files, computed once when it loads


class DreamLLM(nn.Module):
    def __init__(self, llm: LlamaForCausalLM, vision: CLIPVisionEmbedding, dream: DreamEmbedding,
                 head: StableDiffusionHead, tokenizer, special: SpecialTokens, info: ModelInfo, plugin_config: dict):
        super().__init__()
        self.llm = llm
        self.vision = vision
        self.dream = dream
        self.head = head
        self.tokenizer = tokenizer
        self.special = special
        self.info = info
        self.plugin_config = plugin_config  # the checkpoint's plugins_init_kwargs, kept for saving

    @property
    def device(self) -> torch.device:
        return self.dream.dream_queries.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dream.dream_queries.dtype

    @property
    def hidden_size(self) -> int:
        return self.llm.config.hidden_size

    @property
    def max_positions(self) -> int:
        return self.llm.config.max_position_embeddings

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, h, w) in [0, 1] -> image-block features (N, P, H) for the context."""
        pixels = self.vision.preprocess(images.to(self.device))
        return self.vision(pixels).to(self.dtype)

    def query_embeddings(self, batch_size: int) -> torch.Tensor:
        return self.dream(batch_size).to(self.dtype)

    def condition(self, query_states: torch.Tensor) -> torch.Tensor:
        return self.head(query_states)
