"""Compiled engines: DreamLLM's UNet, VAE decoder and vision encoder as ONNX graphs, run by ONNX Runtime or built
into TensorRT engines, kept in a keyed cache under `home()/engines`. The LM is not compiled here: it runs on torch
on every backend, over the paged KV pool (dreamgen/generation/runner.py).

    graphs.py            the three graphs: wrapper modules, input/output names, dynamic axes
    split_graphs.py      the UNet cut for cache_interval (deepcache.py) as three more graphs, and their runner
    fused_attention.py   the UNet's attention as ONNX Runtime's fused MultiHeadAttention (onnxruntime flavour)
    export.py            ONNX export (legacy exporter), external data for graphs over 2 GB
    cache.py             the engine cache: keys, manifests, locked atomic builds
    fingerprint.py       which weights a graph came from
    build.py             the model's graphs in the cache, exported on demand
    onnx_backend.py      OnnxComponents: the Components protocol on ONNX Runtime
    profiles.py          TensorRT optimization profiles (min/opt/max shapes)
    tensorrt_backend.py  TensorRT engine builds and TensorRTComponents (GPU only; tensorrt imported lazily)
    backends.py          select_backend: torch | onnx | tensorrt | auto; build_engines
    verify.py            each part against torch on random inputs

May import model, generation (its Components protocol) and the shared vocabulary; never jobs.
"""
from .backends import BACKENDS, build_engines, select_backend
from .build import default_precision, ensure_onnx_graphs, find_onnx_graphs
from .cache import CacheEntry, EngineCache, onnx_entry, tensorrt_entry
from .export import export_part
from .graphs import PARTS, PRECISIONS
from .onnx_backend import OnnxComponents
from .profiles import EngineLimits
from .verify import verify_cache, verify_components

__all__ = ["BACKENDS", "build_engines", "CacheEntry", "EngineCache", "EngineLimits", "OnnxComponents", "PARTS", "PRECISIONS",
           "default_precision", "ensure_onnx_graphs", "export_part", "find_onnx_graphs", "onnx_entry",
           "select_backend", "tensorrt_entry", "verify_cache", "verify_components"]
# TensorRTComponents lives in dreamgen.engines.tensorrt_backend; importing it never imports tensorrt.
