"""DreamLLM-7B's modules at the released checkpoint's shapes, with no weights: for memory plans and the GPU check.

LLaMA-7B (Vicuna-7B v1.1: hidden 4096, 32 layers, 32 heads with no grouped-query attention, 2048 positions, the
released vocabulary of 32008), CLIP ViT-L/14 and the SD 2.1-base UNet and VAE from the configs packaged with
dreamgen, 64 dream queries. Parameters are on the meta device (nothing allocated, nothing downloaded), in the dtypes
the loader gives them: `dtype` everywhere but the VAE, which stays fp32. The tokenizer is the tiny model's (its ids
fit the vocabulary): enough to build a Generator around the shapes, not to write sense.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from .card import PACKAGED_CONFIGS, read_json
from .dreamllm import CLIPVisionEmbedding, DreamEmbedding, DreamLLM, ModelInfo, StableDiffusionHead
from .special_tokens import RELEASED_IDS, SpecialTokens
from .tensors import on_meta

LLAMA_7B = dict(vocab_size=32008, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
                bos_token_id=1, eos_token_id=2, pad_token_id=32000, tie_word_embeddings=False)
DREAM_QUERIES = 64


def build_released_shape(dtype: torch.dtype = torch.bfloat16) -> DreamLLM:
    from .tiny import TOKENIZER_CORPUS, build_tokenizer

    clip_config = read_json(PACKAGED_CONFIGS / "clip-vit-large-patch14" / "config.json")
    sd = PACKAGED_CONFIGS / "sd21-base"
    with on_meta():
        llm = LlamaForCausalLM(LlamaConfig(**LLAMA_7B))
        vision = CLIPVisionEmbedding(CLIPVisionModel(CLIPVisionConfig.from_dict(
            clip_config.get("vision_config", clip_config))), LLAMA_7B["hidden_size"], select_layer=-2)
        dream = DreamEmbedding(DREAM_QUERIES, LLAMA_7B["hidden_size"])
        unet = UNet2DConditionModel.from_config(read_json(sd / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(read_json(sd / "vae" / "config.json"))
        head = StableDiffusionHead(unet, vae, LLAMA_7B["hidden_size"],
                                   read_json(sd / "scheduler" / "scheduler_config.json"))
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # diffusers warns, needlessly, on every .to(dtype=...)
    try:
        for part in (llm, vision, dream, unet, head.projector):
            part.to(dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    tokenizer = build_tokenizer([line for line in TOKENIZER_CORPUS if line.strip()])
    special = SpecialTokens.from_ids(RELEASED_IDS, bos=1, eos=2, num_dream_queries=DREAM_QUERIES,
                                     num_image_patches=vision.num_patches)
    info = ModelInfo(name="dreamllm-7b-shape", dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"))
    model = DreamLLM(llm, vision, dream, head, tokenizer, special, info, plugin_config={})
    return model.eval().requires_grad_(False)


def fill_random(model: DreamLLM, device: str, seed: int = 0) -> DreamLLM:
    """Give the meta-device shapes real random weights on `device` (nothing downloaded): normal(0, 0.02) for
    matrices and embeddings, ones for norm weights, zeros for biases, and the buffers no checkpoint holds
    (rotary frequencies, position ids) built again on the device. For speed and memory measurements: the text
    it writes is noise."""
    generator = torch.Generator(device=device).manual_seed(seed)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.fill_(1.0 if "norm" in name or name.endswith("weight") else 0.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
        llm = model.llm.model
        llm.rotary_emb = type(llm.rotary_emb)(config=model.llm.config, device=device)
        for module in model.modules():
            if hasattr(module, "position_ids") and isinstance(module.position_ids, torch.Tensor):
                module.position_ids.copy_(torch.arange(module.position_ids.shape[-1], device=device)
                                          .expand_as(module.position_ids))
    return model
