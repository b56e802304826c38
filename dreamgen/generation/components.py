"""The component calls the generation loop makes, behind one small interface per backend.

The loop never touches a module: it calls `lm_step`, `unet`, `vae_decode` and `encode_images`. The KV cache is plain
tensors, a list of (key, value) per layer shaped (B, heads, L, head_dim), so an ONNX or TensorRT backend can hold
the same thing. Small pieces (token embeddings, dream queries, the condition projector) stay in torch everywhere.
"""
from __future__ import annotations

from typing import Protocol

import torch
from transformers import DynamicCache

from ..model.dreamllm import DreamLLM
from ..model.llama_cache import cache_argument

KVCache = list  # [(key, value)] per layer, each (B, heads, L, head_dim)


class Components(Protocol):
    name: str

    def lm_step(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: KVCache | None) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
        """(B, T, H) embeds, (B, L+T) mask, (B, T) positions -> last-position logits (B, V),
        post-norm hidden states (B, T, H), the cache grown by T."""

    def unet(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor: ...

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, 4, h, w) -> images (N, 3, 8h, 8w) in [0, 1]."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, h, w) in [0, 1] -> image-block features (N, P, H)."""


class TorchComponents:
    """Plain torch on whatever device the model is on."""

    name = "torch"

    def __init__(self, model: DreamLLM, compile: bool = False):
        self.model = model
        head = model.head
        if model.device.type == "cuda":
            # Convolutions run fastest on tensor cores with NHWC activations; the weights follow once here.
            head.unet.to(memory_format=torch.channels_last)
            head.vae.to(memory_format=torch.channels_last)
        self._unet = head.unet
        if compile:  # one compiled graph per batch shape the UNet meets (guards recompile on a new one)
            self._unet = torch.compile(head.unet, fullgraph=False, dynamic=False)

    @torch.no_grad()
    def lm_step(self, embeds, attention_mask, position_ids, past):
        llm = self.model.llm
        cache = DynamicCache(ddp_cache_data=past, config=llm.config) if past else DynamicCache(config=llm.config)
        out = llm.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=True, **cache_argument(cache))
        hidden = out.last_hidden_state  # post-norm: LlamaModel applies the final RMSNorm
        logits = llm.lm_head(hidden[:, -1]).float()
        present = [(layer.keys, layer.values) for layer in cache.layers]
        return logits, hidden, present

    @torch.no_grad()
    def unet(self, sample, timestep, encoder_hidden_states):
        if sample.is_cuda:
            sample = sample.contiguous(memory_format=torch.channels_last)
        return self._unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    @torch.no_grad()
    def vae_decode(self, latents):
        vae = self.model.head.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images):
        return self.model.encode_images(images)
