"""Pictures: the guidance condition, and denoising, either step by step beside the text or all at once.

    overlap   a thread of its own paints the pictures while the generator writes: painter_thread.py
    stepwise  a picture asked for starts at the next generator step; every generator step, all
              pictures in flight take one denoising step together, in one UNet call per latent size, each at
              its own timestep with its own scheduler; a finished picture is decoded and fed back to its own
              document while the others go on. Nobody's decoding waits for a picture to be done, but every
              generator step waits for one denoising step of every size in flight (issue 33: a 1024 px picture
              sets everyone's pace).
    gather    every waiting picture is painted from start to end in one go (paint()), as the generator did before;
              kept for comparison (bench/painting.py) and for `generate --image-only`.
"""
from __future__ import annotations

import torch

from .components import Components
from .diffusion import ImageRequest, Picture, decode_pictures, denoise_group, denoise_step, start_picture


class Painter:
    def __init__(self, model, components: Components, encoder):
        self.model, self.components, self.encoder = model, components, encoder
        self._uncond_cache: dict[str, torch.Tensor] = {}
        self.pictures: dict[int, Picture] = {}  # in flight, by the document asking

    def unconditional(self, negative_prompt: str = "") -> torch.Tensor:
        """The guidance condition: the queries after `<s>` alone (or `<s>` + a negative prompt). Prompt-independent,
        so computed once per negative prompt and cached. (Q, cross_dim)."""
        if negative_prompt not in self._uncond_cache:
            enc = self.encoder
            embeds = torch.cat([enc.embed([self.model.special.bos] + enc.tokens(negative_prompt)), enc.dream_block()])
            n = embeds.shape[0]
            # the LM runs on torch on every backend (the backends paint and read pictures): one plain forward
            with torch.no_grad():
                hidden = self.model.llm.model(inputs_embeds=embeds[None]).last_hidden_state  # post-norm
            q = self.model.special.num_dream_queries
            self._uncond_cache[negative_prompt] = self.model.condition(hidden[0, n - 1 - q:n - 1])
        return self._uncond_cache[negative_prompt]

    # ------------------------------------------------------------------------------------------ stepwise
    def start(self, key: int, request: ImageRequest) -> None:
        head = self.model.head
        self.pictures[key] = start_picture(request, head.scheduler_config, head.unet.config.in_channels,
                                           head.vae_scale_factor, self.model.device, self.model.dtype)

    def step(self) -> dict[int, torch.Tensor]:
        """One denoising step for every picture in flight; returns the images (3, H, W) of those now done."""
        by_size: dict[tuple, list[Picture]] = {}
        for picture in self.pictures.values():
            by_size.setdefault(tuple(picture.latents.shape), []).append(picture)
        for group in by_size.values():
            denoise_step(group, self.components.unet, getattr(self.components, "split_unet", None))
        done = [key for key, picture in self.pictures.items() if picture.done]
        if not done:
            return {}
        images = decode_pictures([self.pictures[key] for key in done], self.components.vae_decode)
        for key in done:
            del self.pictures[key]
        return dict(zip(done, images))

    def drop(self, key: int) -> None:
        self.pictures.pop(key, None)

    def clear(self) -> None:
        self.pictures.clear()

    # ------------------------------------------------------------------------------------------ gather
    def paint(self, requests: list[ImageRequest], check_cancel=None) -> list[torch.Tensor]:
        """Denoise every picture from start to end, batching those of one size; returns (3, H, W) images in
        [0, 1]."""
        head = self.model.head
        results: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.height, request.width), []).append(i)
        for indices in groups.values():
            images = denoise_group([requests[i] for i in indices], self.components.unet, self.components.vae_decode,
                                   head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor,
                                   self.model.device, self.model.dtype, check_cancel,
                                   getattr(self.components, "split_unet", None))
            for i, image in zip(indices, images):
                results[i] = image
        return results
