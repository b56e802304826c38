"""Pictures: the guidance condition, and denoising every waiting picture in as few UNet batches as possible."""
from __future__ import annotations

import torch

from .components import Components
from .diffusion import ImageRequest, denoise_group, group_key


class Painter:
    def __init__(self, model, components: Components, encoder):
        self.model, self.components, self.encoder = model, components, encoder
        self._uncond_cache: dict[str, torch.Tensor] = {}

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

    def paint(self, requests: list[ImageRequest], check_cancel=None) -> list[torch.Tensor]:
        """Denoise every picture, batching those that share timesteps and size; returns (3, H, W) images in [0, 1]."""
        head = self.model.head
        results: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(group_key(request), []).append(i)
        for indices in groups.values():
            images = denoise_group([requests[i] for i in indices], self.components.unet, self.components.vae_decode,
                                   head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor,
                                   self.model.device, self.model.dtype, check_cancel)
            for i, image in zip(indices, images):
                results[i] = image
        return results
