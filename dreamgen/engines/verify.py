"""Run each compiled part against torch on random inputs and report the largest difference.

The error of a part is max |engine - torch| / max(1, max |torch|): absolute for values within [-1, 1] (noise
predictions, images), relative for larger ones.
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
    if getattr(components, "split_unet", None) is not None and reference.split_unet is not None:
        errors = [scaled_error(a, b) for a, b in _probe_cut(model, components, reference, randn)]
        checks.append(PartCheck(backend, CUT, precision, error=max(errors)))
    return checks


CUT = "unet_cut"  # the three graphs of the UNet's cut (split_graphs.py), checked together as split_unet


def _probe_cut(model, components, reference, randn):
    """(engine, torch) pairs of split_unet: every row at a full pass, then rows at mixed phases reusing torch's
    deep features (the noise predictions and the deep features alike)."""
    unet = model.head.unet.config
    for batch, side in ((2, export_latent_size(model)), (4, unet.sample_size), (3, unet.sample_size + 3)):
        sample = randn(batch, unet.in_channels, side, side)
        cond = randn(batch, model.special.num_dream_queries, unet.cross_attention_dim)
        t = torch.linspace(21, 981, batch).round().long()
        every = torch.ones(batch, dtype=torch.bool, device=model.device)
        want_eps, want_deep = reference.split_unet(sample, t, cond, every, None)
        got_eps, got_deep = components.split_unet(sample, t, cond, every, None)
        yield got_eps, want_eps
        yield got_deep, want_deep
        mixed = torch.arange(batch, device=model.device) % 2 == 1
        yield components.split_unet(sample, t, cond, mixed, want_deep)[0], \
            reference.split_unet(sample, t, cond, mixed, want_deep)[0]


def _probe(part, model, components, reference, randn, g):
    """(engine output, torch output) pairs of one part, at a few shapes, odd ones among them."""
    if part == "unet":
        unet = model.head.unet.config
        for batch, side in ((2, export_latent_size(model)), (4, unet.sample_size), (2, unet.sample_size + 3)):
            sample = randn(batch, unet.in_channels, side, side)
            cond = randn(batch, model.special.num_dream_queries, unet.cross_attention_dim)
            # the whole batch at one step, then each sample at its own
            for t in (torch.tensor(377), torch.linspace(21, 981, batch).round().long()):
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
                       for part, entry in onnx_entries(model, precision).items() if part in graphs}
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
    if not all(part in found for part in PARTS):
        reason = "no complete engine set for this TensorRT version and GPU"
        return [PartCheck("tensorrt", part, precision, skipped=reason) for part in sorted(built_anywhere)]
    components = TensorRTComponents(model, {part: cached.file(ENGINE_FILE) for part, cached in found.items()})
    return verify_components(model, components, "tensorrt", precision)
