"""ONNX graphs of a model in the engine cache: exported on first use, found by key afterwards.

ONNX Runtime runs these graphs as they are, and TensorRT engines are built from them, so both backends start here.
The three graphs of the UNet's cut (split_graphs.py) are wanted like the others, but a backend runs without them:
where they cannot be exported, or a cache from before them lacks them and building is off, a warning says so and
pictures with a cache_interval take full UNet steps.
"""
from __future__ import annotations

import logging

import torch

from ..errors import EngineError
from ..generation import deepcache
from ..model.dreamllm import DreamLLM
from .cache import CachedEngine, EngineCache, onnx_entry
from .export import EXPORT_OPSET, GRAPH_FILE, export_part, exporter_version
from .fingerprint import model_fingerprint
from .graphs import graph_io, model_parts, part_flavor, part_precision
from .split_graphs import SPLIT_PARTS

log = logging.getLogger(__name__)
WITHOUT_CUT = "cache_interval > 1 will paint full UNet steps on this backend"


def default_precision(model: DreamLLM) -> str:
    """Graphs in the model's own precision: an fp16 or bf16 model gets fp16 graphs, an fp32 model fp32 ones."""
    return "fp32" if model.dtype == torch.float32 else "fp16"


def onnx_entries(model: DreamLLM, precision: str, opset: int = EXPORT_OPSET, fingerprint: str | None = None,
                 flavor: str = "onnxruntime") -> dict:
    fingerprint = fingerprint or model_fingerprint(model)
    return {part: onnx_entry(fingerprint, part, part_precision(part, precision), opset, exporter_version(),
                             part_flavor(part, flavor), label=model.info.name,
                             cut=deepcache.SHALLOW_SKIPS if part in SPLIT_PARTS else None)
            for part in model_parts(model)}


def ensure_onnx_graphs(model: DreamLLM, precision: str = "fp32", cache: EngineCache | None = None,
                       no_build: bool = False, opset: int = EXPORT_OPSET, external_data: bool | None = None,
                       verify_files: bool = False, flavor: str = "onnxruntime") -> dict[str, CachedEngine]:
    """Every part's graph, from the cache or exported now. no_build: raise EngineError instead of exporting.
    flavor: "onnxruntime" for ONNX Runtime, "portable" for TensorRT (graphs.FLAVORS)."""
    cache = cache or EngineCache()
    hint = f"build them with: dreamgen engines build --model {model.info.name} --backend onnx --precision {precision}"
    graphs = {}
    for part, entry in onnx_entries(model, precision, opset, flavor=flavor).items():
        def build(directory, part=part, entry=entry):
            graph_flavor = entry.keyed["flavor"]
            result = export_part(model, part, entry.precision, directory, opset=opset, external_data=external_data,
                                 flavor=graph_flavor)
            io = graph_io(model, part)
            return {"graph_file": GRAPH_FILE, "external_data": result.external_data, "opset": opset,
                    "flavor": graph_flavor, "inputs": list(io.inputs), "outputs": list(io.outputs)}

        try:
            graphs[part] = cache.ensure(entry, build, no_build=no_build, verify_files=verify_files, hint=hint)
        except EngineError as e:
            if part not in SPLIT_PARTS:
                raise
            log.warning("%s; %s", e, WITHOUT_CUT)
            return {p: g for p, g in graphs.items() if p not in SPLIT_PARTS}  # the cut whole or not at all
    return graphs


def find_onnx_graphs(model: DreamLLM, precision: str, cache: EngineCache | None = None,
                     flavor: str = "onnxruntime") -> tuple[dict | None, str]:
    """The model's graphs if every part is built and sound, else (None, why not); the cut's graphs where all three
    are. Never exports."""
    cache = cache or EngineCache()
    found, cut = {}, {}
    for part, entry in onnx_entries(model, precision, flavor=flavor).items():
        problem = cache.problem(entry)
        if problem is not None and part not in SPLIT_PARTS:
            return None, f"{part} graph: {problem}"
        (cut if part in SPLIT_PARTS else found)[part] = cache.lookup(entry)
    if cut and all(cut.values()):
        found.update(cut)
    return found, ""


def graph_files(graphs: dict[str, CachedEngine]) -> dict:
    return {part: cached.file(GRAPH_FILE) for part, cached in graphs.items()}
