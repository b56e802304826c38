"""ONNX graphs of a model in the engine cache: exported on first use, found by key afterwards.

ONNX Runtime runs these graphs as they are, and TensorRT engines are built from them, so both backends start here.
"""
from __future__ import annotations

import torch

from ..model.dreamllm import DreamLLM
from .cache import CachedEngine, EngineCache, onnx_entry
from .export import EXPORT_OPSET, GRAPH_FILE, export_part, exporter_version
from .fingerprint import model_fingerprint
from .graphs import graph_io, model_parts, part_flavor, part_precision


def default_precision(model: DreamLLM) -> str:
    """Graphs in the model's own precision: an fp16 or bf16 model gets fp16 graphs, an fp32 model fp32 ones."""
    return "fp32" if model.dtype == torch.float32 else "fp16"


def onnx_entries(model: DreamLLM, precision: str, opset: int = EXPORT_OPSET, fingerprint: str | None = None,
                 flavor: str = "onnxruntime") -> dict:
    fingerprint = fingerprint or model_fingerprint(model)
    return {part: onnx_entry(fingerprint, part, part_precision(part, precision), opset, exporter_version(),
                             part_flavor(part, flavor), label=model.info.name) for part in model_parts(model)}


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

        graphs[part] = cache.ensure(entry, build, no_build=no_build, verify_files=verify_files, hint=hint)
    return graphs


def find_onnx_graphs(model: DreamLLM, precision: str, cache: EngineCache | None = None,
                     flavor: str = "onnxruntime") -> tuple[dict | None, str]:
    """The model's graphs if every part is built and sound, else (None, why not). Never exports."""
    cache = cache or EngineCache()
    found = {}
    for part, entry in onnx_entries(model, precision, flavor=flavor).items():
        problem = cache.problem(entry)
        if problem is not None:
            return None, f"{part} graph: {problem}"
        found[part] = cache.lookup(entry)
    return found, ""


def graph_files(graphs: dict[str, CachedEngine]) -> dict:
    return {part: cached.file(GRAPH_FILE) for part, cached in graphs.items()}
