"""ONNX export of one graph with the legacy (TorchScript) exporter: about 20x faster than the dynamo exporter on
these models, and its graphs load in ONNX Runtime and TensorRT alike.

A graph whose weights pass protobuf's 2 GB limit is written with its weights in one external file beside it,
`model.onnx.data`; smaller graphs can be forced to do the same (that is how the tests cover it).
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EngineError
from ..model.dreamllm import DreamLLM
from .graphs import graph_io, graph_module, sample_inputs

log = logging.getLogger(__name__)

EXPORT_OPSET = 17  # LayerNormalization is native from 17; TensorRT 10 and ONNX Runtime >= 1.14 take it
# Bump when a wrapper in graphs.py changes what a graph computes or takes: cached graphs are then stale.
# 2: the UNet takes one timestep per sample, (batch,), not one (1,) for the batch.
GRAPHS_VERSION = 2
GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf refuses messages of 2 GiB; keep a margin for the graph itself


def exporter_version() -> str:
    """What made a graph, for the cache key: a new torch or a changed wrapper makes new graphs."""
    return f"torch-{torch.__version__}-legacy/graphs-v{GRAPHS_VERSION}"


@dataclass
class ExportResult:
    path: Path  # the .onnx file; its external data, if any, is beside it
    files: list[Path]
    external_data: bool
    seconds: float


def export_part(model: DreamLLM, part: str, precision: str, out_dir: str | Path, opset: int = EXPORT_OPSET,
                external_data: bool | None = None, flavor: str = "portable") -> ExportResult:
    """Export `part` of `model` in `precision` to `out_dir/model.onnx`. external_data None decides by size;
    flavor "onnxruntime" uses ONNX Runtime's fused attention in the UNet (see fused_attention.py)."""
    import onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    io = graph_io(model, part)
    started = time.perf_counter()
    with graph_module(model, part, precision, flavor) as module, tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        device = next(module.parameters()).device
        args = tuple(a.to(device) for a in sample_inputs(model, part, precision))
        raw = Path(tmp) / GRAPH_FILE
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # TracerWarnings name Python values frozen into the graph; the tests run every graph at other shapes.
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(raw), input_names=list(io.inputs), output_names=list(io.outputs),
                                  dynamic_axes=io.dynamic_axes, opset_version=opset, do_constant_folding=True,
                                  dynamo=False)
        except Exception as e:
            raise EngineError(f"ONNX export of {part} ({precision}, opset {opset}) failed: "
                              f"{type(e).__name__}: {e}") from e
        # Re-save: the exporter scatters a large model's weights over one file per tensor; gather them in one.
        proto = onnx.load(str(raw), load_external_data=True)
        external = _weight_bytes(proto) > PROTOBUF_LIMIT if external_data is None else external_data
        target = out_dir / GRAPH_FILE
        for stale in (target, out_dir / DATA_FILE):
            stale.unlink(missing_ok=True)
        if external:
            onnx.save_model(proto, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=DATA_FILE, size_threshold=1024)
        else:
            onnx.save_model(proto, str(target))
    onnx.checker.check_model(str(target))  # by path, so graphs with external data are checked too
    files = [target] + ([out_dir / DATA_FILE] if (out_dir / DATA_FILE).exists() else [])
    seconds = time.perf_counter() - started
    log.info("exported %s (%s) to %s in %.1f s%s", part, precision, target, seconds,
             " with external data" if external else "")
    return ExportResult(path=target, files=files, external_data=external, seconds=seconds)


def _weight_bytes(proto) -> int:
    from onnx import numpy_helper

    total = 0
    for tensor in proto.graph.initializer:
        total += len(tensor.raw_data) if tensor.raw_data else numpy_helper.to_array(tensor).nbytes
    return total
