"""The I-GPT objective of DreamLLM: one causal pass over interleaved sequences, two losses.

    loss = w_lm * cross-entropy(next token) + w_vm * MSE(UNet noise prediction, noise)
           [+ w_readout * cross-entropy(attributes read from the condition), where images are labelled: readout.py]

The dream block's Q `<im_patch>` embeddings are replaced by the learned queries, the image block's P by projected
CLIP features. The UNet is conditioned on the condition projector applied to the final (post-norm) hidden states
at the query positions, so the diffusion loss reaches the projector, the queries and the LLM. With probability
cfg_dropout an image's condition becomes the unconditional one (the queries after `<s>` alone, exactly what the
generation loop uses for guidance), so classifier-free guidance has something to push against.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..generation.diffusion import make_scheduler
from ..model.dreamllm import DreamLLM
from .data import IGNORE, Batch, load_image


@dataclass
class LossOutput:
    loss: torch.Tensor  # what backward() takes
    lm: float
    vm: float
    lm_tokens: int
    images: int
    readout: float = 0.0


def clip_hidden(vision, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP features before the vision projector, (N, P, C): CLIPVisionEmbedding.forward up to its projector."""
    out = vision.clip_vision_model(pixels, output_hidden_states=True)
    return out.hidden_states[vision.select_layer][:, 1:]  # CLS dropped


class ImageInputs:
    """What the objective needs of a training image: image-block features and VAE latents. A frozen part's output
    is computed once per image and kept, since it cannot change (the vision projector still trains on top)."""

    def __init__(self, model: DreamLLM, cache_clip: bool, cache_latents: bool):
        self.model = model
        self.image_size = model.head.default_image_size
        self.cache_clip, self.cache_latents = cache_clip, cache_latents
        self._clip: dict[str, torch.Tensor] = {}
        self._latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _pixels(self, paths: list[str]) -> torch.Tensor:
        return torch.stack([load_image(p, self.image_size) for p in paths]).to(self.model.device)  # (N, 3, S, S)

    def _clip_features(self, paths: list[str]) -> torch.Tensor:
        vision = self.model.vision
        if not self.cache_clip:
            return clip_hidden(vision, vision.preprocess(self._pixels(paths)))
        missing = list(dict.fromkeys(p for p in paths if p not in self._clip))
        if missing:
            with torch.no_grad():
                features = clip_hidden(vision, vision.preprocess(self._pixels(missing)))
            self._clip.update(zip(missing, features))
        return torch.stack([self._clip[p] for p in paths])

    def image_features(self, paths: list[str]) -> torch.Tensor:
        """Image-block embeddings (N, P, H)."""
        return self.model.vision.projector(self._clip_features(paths))

    def latents(self, paths: list[str], generator: torch.Generator) -> torch.Tensor:
        """Scaled latents sampled from the VAE posterior, (N, C, h, w)."""
        vae = self.model.head.vae
        if not self.cache_latents:
            dist = vae.encode(self._pixels(paths) * 2 - 1).latent_dist
            mean, std = dist.mean, dist.std
        else:
            missing = list(dict.fromkeys(p for p in paths if p not in self._latents))
            if missing:
                with torch.no_grad():
                    dist = vae.encode(self._pixels(missing) * 2 - 1).latent_dist
                self._latents.update(zip(missing, zip(dist.mean, dist.std)))
            mean = torch.stack([self._latents[p][0] for p in paths])
            std = torch.stack([self._latents[p][1] for p in paths])
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        return (mean + std * noise) * vae.config.scaling_factor


def word_token_weights(tokenizer, word_weights: dict, vocab_size: int) -> torch.Tensor | None:
    """(V,) loss weights from {word: weight}: the word's token as it appears after a space gets the weight.
    A word that is not one token has no single target to weigh: an error naming it."""
    if not word_weights:
        return None
    weights = torch.ones(vocab_size)
    for word, weight in word_weights.items():
        ids = tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"loss.word_weights.{word}: {word!r} is {len(ids)} tokens to this tokenizer, not one")
        weights[ids[0]] = float(weight)
    return weights


class IGPTObjective:
    def __init__(self, model: DreamLLM, inputs: ImageInputs, w_lm: float = 1.0, w_vm: float = 10.0,
                 cfg_dropout: float = 0.1, noise_samples: int = 1, readout=None, w_readout: float = 0.0,
                 token_weights: torch.Tensor | None = None):
        self.model, self.inputs = model, inputs
        self.token_weights = token_weights  # (V,) next-token loss weight per token id; None: all 1
        self.readout, self.w_readout = readout, w_readout  # readout.Readout, when the data labels its images
        self.w_lm, self.w_vm = w_lm, w_vm
        self.cfg_dropout, self.noise_samples = cfg_dropout, noise_samples
        self.scheduler = make_scheduler("ddpm", model.head.scheduler_config)

    # ------------------------------------------------------------------------------------------ pieces
    def embed(self, batch: Batch) -> torch.Tensor:
        """Token embeddings with the queries and the image features put in place of their `<im_patch>`s."""
        model = self.model
        embeds = model.embed_tokens(batch.input_ids)  # (B, L, H)
        hidden = embeds.shape[-1]
        n = len(batch.dream_paths)
        if n:
            q = model.special.num_dream_queries
            rows, cols = self._positions(batch.dream_rows, batch.dream_starts, q)
            embeds = embeds.index_put((rows, cols), model.dream(n).reshape(n * q, hidden))
        m = len(batch.image_paths)
        if m:
            p = model.special.num_image_patches
            rows, cols = self._positions(batch.image_rows, batch.image_starts, p)
            features = self.inputs.image_features(batch.image_paths)  # (M, P, H)
            embeds = embeds.index_put((rows, cols), features.reshape(m * p, hidden).to(embeds.dtype))
        return embeds

    @staticmethod
    def _positions(rows: torch.Tensor, starts: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (row, column) indices of `width` positions from each start: ((N * width,), (N * width,))."""
        offsets = torch.arange(width)
        return rows.repeat_interleave(width), (starts[:, None] + offsets).reshape(-1)

    def unconditional(self) -> torch.Tensor:
        """The condition of the queries after `<s>` alone, (1, Q, cross_dim), with gradients: it is learned too."""
        model, s = self.model, self.model.special
        ends = model.embed_tokens(torch.tensor([s.bos, s.dream_start, s.dream_end], device=model.device))
        embeds = torch.cat([ends[:2], model.dream(1)[0], ends[2:]])[None]  # (1, Q + 3, H)
        hidden = model.llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        return model.condition(hidden[:, 2:2 + s.num_dream_queries])

    def lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = self.model.llm.lm_head(hidden[:, :-1]).float()  # (B, L-1, V): position t predicts token t+1
        targets = labels[:, 1:]
        count = int((targets != IGNORE).sum())
        if not count:
            return hidden.new_zeros(()), 0
        flat = targets.reshape(-1)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, ignore_index=IGNORE, reduction="none")
        if self.token_weights is not None:
            # divided by the token count, not the weights' sum: the other tokens keep their gradient's scale
            losses = losses * self.token_weights.to(losses.device)[flat.clamp(min=0)]
        return losses.sum() / count, count

    def diffusion_loss(self, cond: torch.Tensor, paths: list[str], generator: torch.Generator) -> torch.Tensor:
        """Noise-prediction MSE of the UNet conditioned on `cond` (N, Q, C), `noise_samples` draws per image."""
        k = self.noise_samples
        latents = self.inputs.latents(paths, generator).repeat_interleave(k, 0)  # (N * k, C, h, w)
        cond = cond.repeat_interleave(k, 0)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],), generator=generator).to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        unet = self.model.head.unet
        predicted = unet(noisy.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return F.mse_loss(predicted.float(), target.float())

    # ------------------------------------------------------------------------------------------ the loss
    def __call__(self, batch: Batch, generator: torch.Generator) -> LossOutput:
        model = self.model
        # 1. embeddings, with the blocks' stand-ins
        embeds = self.embed(batch)
        # 2. one causal pass; LlamaModel ends with its RMSNorm, so these are the post-norm states
        hidden = model.llm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                 use_cache=False).last_hidden_state  # (B, L, H)
        # 3. next-token loss
        lm, lm_tokens = self.lm_loss(hidden, batch.labels)
        loss = self.w_lm * lm
        # 4. conditions at the query positions, some replaced by the unconditional one
        n = len(batch.dream_paths)
        vm = readout = hidden.new_zeros(())
        if n and (self.w_vm > 0 or self.readout is not None):
            q = model.special.num_dream_queries
            rows, cols = self._positions(batch.dream_rows, batch.dream_starts, q)
            cond = model.condition(hidden[rows, cols].reshape(n, q, -1))  # (N, Q, cross_dim)
            if self.readout is not None:  # on the conditions the text made, before any is dropped
                readout = self.readout.loss(cond, batch.dream_labels)
                loss = loss + self.w_readout * readout
            if self.cfg_dropout > 0:
                drop = torch.rand(n, generator=generator) < self.cfg_dropout
                if drop.any():
                    cond = torch.where(drop.to(cond.device)[:, None, None], self.unconditional().expand_as(cond), cond)
        if n and self.w_vm > 0:
            # 5. diffusion loss through the UNet
            vm = self.diffusion_loss(cond, batch.dream_paths, generator)
            loss = loss + self.w_vm * vm
        return LossOutput(loss=loss, lm=float(lm.detach()), vm=float(vm.detach()), lm_tokens=lm_tokens, images=n,
                          readout=float(readout.detach()))
