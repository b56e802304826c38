"""Run each compiled part against torch on random inputs and report the largest difference.

The error of a part is max |engine - torch| / max(1, max |torch|): absolute for values within [-1, 1] (noise
predictions, images, features), relative for the LM's logits, which reach the hundreds or thousands. LM outputs
are compared at real (unmasked) positions only: what a pad position holds is never read.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation.components import Components, TorchComponents
from ..model.dreamllm import DreamLLM
from .graphs import PARTS, export_latent_size

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


@dataclass
class PartCheck:
    backend: str
    part: str
    precision: str
    error: float | None = None
    skipped: str | None = None  # why the part was not run

    @property
    def tolerance(self) -> float:
        return TOLERANCE["fp32" if self.part == "vae_decoder" else self.precision]

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.error is not None and self.error <= self.tolerance

    def line(self) -> str:
        head = f"{self.backend:9} {self.part:12} {self.precision}"
        if self.skipped:
            return f"{head}  skipped: {self.skipped}"
        verdict = "ok" if self.ok else "TOO LARGE"
        return f"{head}  max error {self.error:.2e} (tolerance {self.tolerance:.0e}) {verdict}"


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    if actual.shape != expected.shape:
        return float("inf")
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


@torch.no_grad()
def verify_components(model: DreamLLM, components: Components, backend: str, precision: str,
                      seed: int = 0) -> list[PartCheck]:
    reference = TorchComponents(model)
    g = torch.Generator().manual_seed(seed)
    device, dtype = model.device, model.dtype

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    checks = []
    for part in PARTS:
        errors = [scaled_error(a, b) for a, b in _probe(part, model, components, reference, randn, g)]
        checks.append(PartCheck(backend, part, precision, error=max(errors)))
    return checks


def _probe(part, model, components, reference, randn, g):
    """(engine output, torch output) pairs of one part, at a few shapes, odd ones among them."""
    if part == "unet":
        unet = model.head.unet.config
        for batch, side in ((2, export_latent_size(model)), (4, unet.sample_size), (2, unet.sample_size + 3)):
            sample = randn(batch, unet.in_channels, side, side)
            cond = randn(batch, model.special.num_dream_queries, unet.cross_attention_dim)
            t = torch.tensor(377)
            yield components.unet(sample, t, cond), reference.unet(sample, t, cond)
    elif part == "vae_decoder":
        side = model.head.unet.config.sample_size
        for batch, h, w in ((1, side, side), (2, side + 1, side - 1)):
            latents = torch.randn(batch, model.head.vae.config.latent_channels, h, w, generator=g).to(model.device)
            yield components.vae_decode(latents), reference.vae_decode(latents)
    elif part == "vision":
        size = model.head.default_image_size
        images = torch.rand(2, 3, size, size, generator=g).to(model.device)
        yield components.encode_images(images), reference.encode_images(images)
    elif part == "lm_step":
        yield from _probe_lm(model, components, reference, randn)


def _probe_lm(model, components, reference, randn):
    B, T, H = 2, 7, model.hidden_size
    embeds = randn(B, T, H)
    mask = torch.ones(B, T, dtype=torch.long, device=model.device)
    mask[1, :2] = 0  # the second row left-padded, as the generator pads shorter documents
    positions = (torch.cumsum(mask, 1) - 1).clamp(min=0)
    got, want = components.lm_step(embeds, mask, positions, None), reference.lm_step(embeds, mask, positions, None)
    yield from _lm_pairs(got, want, mask[:, -T:].bool())
    # one decoded token on the cache each side built
    step = randn(B, 1, H)
    mask2 = torch.cat([mask, torch.ones(B, 1, dtype=torch.long, device=model.device)], 1)
    positions2 = positions[:, -1:] + 1
    got2 = components.lm_step(step, mask2, positions2, got[2])
    want2 = reference.lm_step(step, mask2, positions2, want[2])
    yield from _lm_pairs(got2, want2, torch.ones(B, 1, dtype=torch.bool, device=model.device), mask2.bool())


def _lm_pairs(got, want, new_real, cache_real=None):
    (logits, hidden, present), (ref_logits, ref_hidden, ref_present) = got, want
    yield logits, ref_logits
    yield hidden[new_real], ref_hidden[new_real]  # (real positions, H)
    cache_real = new_real if cache_real is None else cache_real
    for (key, value), (ref_key, ref_value) in zip(present, ref_present):
        # (B, heads, L, d) -> (B, L, heads, d) so that the (B, L) mask picks real positions
        yield key.transpose(1, 2)[cache_real], ref_key.transpose(1, 2)[cache_real]
        yield value.transpose(1, 2)[cache_real], ref_value.transpose(1, 2)[cache_real]


def verify_cache(model: DreamLLM, cache=None, precisions=("fp32", "fp16"),
                 threads: int | None = None) -> list[PartCheck]:
    """Check every engine set built for `model`: files against their manifests' sha256, then each part against
    torch. TensorRT engines are found by the sha256 of the portable graphs they were built from."""
    from .build import find_onnx_graphs, graph_files, onnx_entries
    from .cache import EngineCache
    from .onnx_backend import OnnxComponents

    cache = cache or EngineCache()
    checks = []
    for precision in precisions:
        graphs, _ = find_onnx_graphs(model, precision, cache)
        if graphs is not None:
            damaged = {part: cache.problem(entry, verify_files=True)
                       for part, entry in onnx_entries(model, precision).items()}
            damaged = {part: problem for part, problem in damaged.items() if problem}
            if damaged:
                checks += [PartCheck("onnx", part, precision, skipped=problem) for part, problem in damaged.items()]
            else:
                components = OnnxComponents(model, graph_files(graphs), threads=threads)
                checks += verify_components(model, components, "onnx", precision)
        portable, _ = find_onnx_graphs(model, precision, cache, flavor="portable")
        if portable is not None:
            checks += _verify_tensorrt(model, cache, precision, portable)
    return checks


def _verify_tensorrt(model, cache, precision, graphs) -> list[PartCheck]:
    from .tensorrt_backend import (
        ENGINE_FILE,
        TensorRTComponents,
        built_tensorrt_engines,
        compute_capability,
        import_tensorrt,
        tensorrt_problem,
    )

    built_anywhere = built_tensorrt_engines(cache, graphs)  # by any TensorRT version, for any GPU
    if not built_anywhere:
        return []
    problem = tensorrt_problem(model)
    if problem:
        return [PartCheck("tensorrt", part, precision, skipped=problem) for part in sorted(built_anywhere)]
    found = built_tensorrt_engines(cache, graphs, import_tensorrt().__version__, compute_capability(model.device))
    if len(found) < len(PARTS):
        reason = "no complete engine set for this TensorRT version and GPU"
        return [PartCheck("tensorrt", part, precision, skipped=reason) for part in sorted(built_anywhere)]
    components = TensorRTComponents(model, {part: cached.file(ENGINE_FILE) for part, cached in found.items()})
    return verify_components(model, components, "tensorrt", precision)
