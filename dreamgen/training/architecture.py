"""A new, untrained DreamLLM of the released classes at the sizes a config asks for, and its parts' freezing.

The structure is the released one (LLaMA, CLIP vision tower + linear projector, dream queries, SD UNet + VAE +
linear condition projector); only the sizes differ, so everything that loads or runs the released model runs this.
"""
from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from ..errors import TrainingError
from ..model.dreamllm import CLIPVisionEmbedding, DreamEmbedding, DreamLLM, ModelInfo, StableDiffusionHead
from ..model.special_tokens import RELEASED_IDS, SpecialTokens
from ..model.tiny import SD_SCHEDULER_CONFIG
from .config import ArchitectureConfig, FreezeConfig, VAEArchitectureConfig

log = logging.getLogger(__name__)


INITIAL_LOG_VARIANCE = -6.0  # posterior std ~0.05 at the start


def build_vae(a: VAEArchitectureConfig) -> AutoencoderKL:
    levels = len(a.channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=a.latent_channels,
                        layers_per_block=a.layers_per_block, norm_num_groups=a.norm_groups,
                        block_out_channels=tuple(a.channels), down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, sample_size=a.image_size)
    # A fresh posterior has std ~1, which drowns the untrained latents in noise and slows the decoder down a lot;
    # start near a plain autoencoder and let the KL term widen the posterior where it costs nothing.
    with torch.no_grad():
        vae.quant_conv.bias[a.latent_channels:] = INITIAL_LOG_VARIANCE
    return vae


def special_tokens_of(tokenizer, num_queries: int, num_patches: int) -> SpecialTokens:
    return SpecialTokens.from_ids({t: tokenizer.convert_tokens_to_ids(t) for t in RELEASED_IDS},
                                  bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                                  num_dream_queries=num_queries, num_image_patches=num_patches)


def build_model(a: ArchitectureConfig, tokenizer, vae: AutoencoderKL, seed: int, name: str) -> DreamLLM:
    """A freshly initialised DreamLLM around `tokenizer` and `vae` (trained by the vae stage, or any SD VAE)."""
    if a.hidden % a.heads:
        raise TrainingError(f"model.architecture: hidden {a.hidden} is not a multiple of heads {a.heads}")
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
        max_position_embeddings=a.max_positions, rms_norm_eps=1e-6, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))
    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=a.clip_hidden, intermediate_size=2 * a.clip_hidden, num_hidden_layers=a.clip_layers,
        num_attention_heads=a.clip_heads, image_size=a.clip_image, patch_size=a.clip_patch,
        projection_dim=a.clip_hidden))
    vision = CLIPVisionEmbedding(clip, a.hidden, select_layer=-2)
    dream = DreamEmbedding(a.queries, a.hidden)
    torch.nn.init.normal_(dream.dream_queries, std=0.02)  # as the reference initialises them
    levels = len(a.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=a.latent_size, in_channels=vae.config.latent_channels, out_channels=vae.config.latent_channels,
        layers_per_block=a.unet_layers_per_block, block_out_channels=tuple(a.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=a.cross_dim, attention_head_dim=a.unet_heads, norm_num_groups=a.unet_norm_groups,
        use_linear_projection=True)
    head = StableDiffusionHead(unet, vae, a.hidden, SD_SCHEDULER_CONFIG)
    torch.nn.init.normal_(head.projector.projector.weight, std=a.hidden ** -0.5)
    special = special_tokens_of(tokenizer, a.queries, vision.num_patches)
    return DreamLLM(llm, vision, dream, head, tokenizer, special, ModelInfo(name=name), plugin_config={})


def apply_freeze(model: DreamLLM, freeze: FreezeConfig) -> list[tuple[str, torch.nn.Parameter]]:
    """Set requires_grad part by part; returns the trainable (name, parameter) pairs in a stable order."""
    parts = {
        "llm": model.llm, "vision": model.vision.clip_vision_model, "vision_projector": model.vision.projector,
        "queries": model.dream, "projector": model.head.projector, "unet": model.head.unet, "vae": model.head.vae,
    }
    for part, module in parts.items():
        module.requires_grad_(not getattr(freeze, part))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("freeze: every part is frozen; nothing would train")
    return trainable
