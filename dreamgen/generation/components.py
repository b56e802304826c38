"""The picture side of generation behind one small interface per backend: `unet`, `vae_decode` and `encode_images`.

Those are what ONNX Runtime and TensorRT can run (dreamgen/engines). The LM is not here: it runs on torch on every
backend, over the paged KV pool, its decode steps compiled and captured as CUDA graphs on a GPU (runner.py). Small
pieces (token embeddings, dream queries, the condition projector) stay in torch everywhere.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..model.dreamllm import DreamLLM
from . import deepcache


class Components(Protocol):
    name: str

    def unet(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Noise prediction of sample (N, 4, h, w) at timestep: 0-d (the whole batch at one step) or (N,)."""

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, 4, h, w) -> images (N, 3, 8h, 8w) in [0, 1]."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, h, w) in [0, 1] -> image-block features (N, P, H)."""

    # The UNet cut at deepcache.SHALLOW_SKIPS (sample, timestep, encoder_hidden_states, full, cached) -> (eps, deep):
    # deepcache.split_unet on torch, the cut's three graphs on ONNX Runtime and TensorRT (engines/split_graphs.py).
    # None where the UNet cannot be cut or the engines lack the cut: the cache then falls back to full steps.
    split_unet = None


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
        self.split_unet = self._split_unet if deepcache.supports_split(head.unet) else None

    @torch.no_grad()
    def unet(self, sample, timestep, encoder_hidden_states):
        return self._call_unet(self._unet, sample, timestep, encoder_hidden_states)

    @torch.no_grad()
    def eager_unet(self, sample, timestep, encoder_hidden_states):
        """The UNet never compiled (the memory plan's measure must not trigger a compilation)."""
        return self._call_unet(self.model.head.unet, sample, timestep, encoder_hidden_states)

    @staticmethod
    def _call_unet(unet, sample, timestep, encoder_hidden_states):
        if sample.is_cuda:
            sample = sample.contiguous(memory_format=torch.channels_last)
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    def _split_unet(self, sample, timestep, encoder_hidden_states, full, cached):
        if sample.is_cuda:
            sample = sample.contiguous(memory_format=torch.channels_last)
        return deepcache.split_unet(self.model.head.unet, sample, timestep, encoder_hidden_states, full, cached)

    @torch.no_grad()
    def vae_decode(self, latents):
        vae = self.model.head.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images):
        return self.model.encode_images(images)
