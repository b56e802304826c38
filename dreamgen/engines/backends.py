"""Choosing the backend a Generator runs on. The generation loop is the same for all of them; only the
Components it calls change.

    torch     the model's own modules
    onnx      ONNX Runtime on the exported graphs (exported now if the cache lacks them)
    tensorrt  TensorRT engines built from those graphs (built now if the cache lacks them)
    auto      tensorrt where it imports, a GPU is present and the model is on it; else onnx where this model's
              graphs are already in the cache; else torch. Never exports or builds anything but TensorRT engines.
"""
from __future__ import annotations

from ..errors import EngineError
from ..generation.components import Components, TorchComponents
from ..model.dreamllm import DreamLLM
from ..settings import BACKENDS
from .build import default_precision, ensure_onnx_graphs, find_onnx_graphs, graph_files
from .cache import EngineCache
from .profiles import EngineLimits


def select_backend(name: str, model: DreamLLM, precision: str | None = None, cache: EngineCache | None = None,
                   no_build: bool = False, threads: int | None = None,
                   limits: EngineLimits | None = None) -> tuple[Components, str]:
    """(components, a line saying what was chosen and why). precision None: the model's own (fp32 or fp16).
    limits: the TensorRT engines' shape limits; None takes the engines `dreamgen engines build` made."""
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    if precision not in (None, "fp32", "fp16"):
        raise EngineError(f"unknown precision {precision!r}: use fp32 or fp16")
    precision = precision or default_precision(model)
    cache = cache or EngineCache()
    if name == "torch":
        return TorchComponents(model), f"backend torch: PyTorch on {model.device} (asked for)"
    if name == "onnx":
        return _onnx(model, precision, cache, no_build, threads, "asked for")
    if name == "tensorrt":
        return _tensorrt(model, precision, cache, no_build, limits, "asked for")

    # auto
    from .tensorrt_backend import tensorrt_problem

    skipped = []
    problem = tensorrt_problem(model)
    if problem is None:
        try:
            why = "auto: TensorRT imports and the model is on a GPU"
            return _tensorrt(model, precision, cache, no_build, limits, why)
        except EngineError as e:
            skipped.append(f"tensorrt failed: {e}")
    else:
        skipped.append(f"not tensorrt: {problem}")
    graphs, why_not = find_onnx_graphs(model, precision, cache)
    if graphs is not None:
        return _onnx(model, precision, cache, True, threads, f"auto: this model's {precision} graphs are in the cache; "
                                                               + "; ".join(skipped))
    skipped.append(f"not onnx: no complete set of {precision} graphs for this model in {cache.root} ({why_not})")
    return TorchComponents(model), f"backend torch: PyTorch on {model.device} (auto: {'; '.join(skipped)})"


def build_engines(model: DreamLLM, backend: str, precision: str | None = None, cache: EngineCache | None = None,
                  limits: EngineLimits | None = None) -> dict:
    """Export the model's graphs into the cache (onnx), and build TensorRT engines from them (tensorrt); what is
    in the cache already is reused. Returns {part: CachedEngine}."""
    precision = precision or default_precision(model)
    cache = cache or EngineCache()
    if backend == "onnx":
        return ensure_onnx_graphs(model, precision, cache)
    if backend != "tensorrt":
        raise EngineError(f"engines are built for onnx or tensorrt, not {backend!r}")
    from .tensorrt_backend import ensure_tensorrt_engines

    return ensure_tensorrt_engines(model, precision, cache, limits=limits)


def _onnx(model, precision, cache, no_build, threads, why) -> tuple[Components, str]:
    from .onnx_backend import OnnxComponents

    graphs = ensure_onnx_graphs(model, precision, cache, no_build=no_build)
    components = OnnxComponents(model, graph_files(graphs), threads=threads)
    return components, f"backend onnx: {components.describe()}, {_origin(graphs, cache)} ({why})"


def _tensorrt(model, precision, cache, no_build, limits, why) -> tuple[Components, str]:
    from .tensorrt_backend import ENGINE_FILE, TensorRTComponents, ensure_tensorrt_engines, require_tensorrt

    require_tensorrt(model)
    engines = ensure_tensorrt_engines(model, precision, cache, no_build=no_build, limits=limits)
    components = TensorRTComponents(model, {part: e.file(ENGINE_FILE) for part, e in engines.items()})
    return components, f"backend tensorrt: {components.describe()}, {_origin(engines, cache)} ({why})"


def _origin(engines: dict, cache: EngineCache) -> str:
    built = [part for part, e in engines.items() if e.built]
    if not built:
        return f"from the cache in {cache.root}"
    seconds = sum(e.seconds for e in engines.values())
    return f"built {', '.join(built)} now ({seconds:.1f} s) into {cache.root}"
