"""The Components protocol on ONNX Runtime: one InferenceSession per graph, created once, fed through IO binding.

Inputs are bound in place when they already have the graph's dtype and device (zero copy), else through a
staging buffer kept per input and reused while its shape holds (an fp32 model feeding an fp16 graph, a 0-d
timestep). Outputs are written by the runtime straight into torch tensors allocated for the call, so a result
the caller keeps is never overwritten by the next run. CUDAExecutionProvider is used when it is installed and
the model is on a GPU; otherwise CPUExecutionProvider.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineError
from ..model.dreamllm import DreamLLM
from .graphs import PARTS, timestep_input
from .split_graphs import SPLIT_PARTS, CompiledSplitUnet

log = logging.getLogger(__name__)

ORT_TO_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64,
                "tensor(int32)": torch.int32, "tensor(bool)": torch.bool}
TORCH_TO_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64,
                  torch.int32: np.int32, torch.bool: np.bool_}


def default_providers(device: torch.device) -> list:
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the optimizer's notes on unfused nodes are noise to a user
    # No spin-waiting in ONNX Runtime's thread pool between runs: the generation loop runs torch ops between graph
    # calls, and spinning pool threads take the cores torch's threads need (tiny model, 2 threads: 1.11 s -> 0.52 s
    # a batch of documents; small: 21.4 s -> 18.2 s).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return options


class GraphSession:
    """One graph in one InferenceSession, run on torch tensors through IO binding."""

    def __init__(self, path: str | Path, providers: list, threads: int | None = None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types; name the file and the cause
            raise EngineError(f"ONNX Runtime cannot load {path}: {type(e).__name__}: {e}") from None
        self.path = Path(path)
        self.provider = self.session.get_providers()[0]
        self.device = torch.device("cuda", _cuda_index(providers)) if self.provider == "CUDAExecutionProvider" \
            else torch.device("cpu")
        self.input_dtypes = {i.name: ORT_TO_TORCH[i.type] for i in self.session.get_inputs()}
        self.output_dtypes = {o.name: ORT_TO_TORCH[o.type] for o in self.session.get_outputs()}
        self._staging: dict[str, torch.Tensor] = {}
        self._placeholder = torch.zeros(1, device=self.device)  # an address for zero-size tensors

    def run(self, feeds: dict[str, torch.Tensor], output_shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        bound = [self._bind(binding.bind_input, name, self._as_input(name, tensor)) for name, tensor in feeds.items()]
        outputs = {name: torch.empty(shape, dtype=self.output_dtypes[name], device=self.device)
                   for name, shape in output_shapes.items()}
        for name, tensor in outputs.items():
            self._bind(binding.bind_output, name, tensor)
        if self.device.type == "cuda":
            # ORT runs on its own stream: let torch's pending writes to the inputs land first.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        if self.device.type == "cuda":
            binding.synchronize_outputs()
        del bound  # the inputs had to live until the run ended
        return outputs

    def _as_input(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self.input_dtypes[name]
        if tensor.dtype == dtype and tensor.device == self.device and tensor.is_contiguous():
            return tensor
        buffer = self._staging.get(name)
        if buffer is None or buffer.shape != tensor.shape:
            buffer = self._staging[name] = torch.empty(tensor.shape, dtype=dtype, device=self.device)
        return buffer.copy_(tensor)

    def _bind(self, bind, name: str, tensor: torch.Tensor) -> torch.Tensor:
        address = tensor.data_ptr() or self._placeholder.data_ptr()
        bind(name, self.device.type, self.device.index or 0, TORCH_TO_NUMPY[tensor.dtype], list(tensor.shape), address)
        return tensor


def _cuda_index(providers: list) -> int:
    for provider in providers:
        if isinstance(provider, tuple) and provider[0] == "CUDAExecutionProvider":
            return int(provider[1].get("device_id", 0))
    return 0


class OnnxComponents:
    """DreamLLM's picture side (UNet, VAE decoder, vision encoder) on ONNX Runtime; the LM, embeddings, queries
    and projectors stay on the torch model. Given the three graphs of the UNet's cut too (split_graphs.py), it has
    a `split_unet` and paints with `cache_interval`; without them split_unet is None (full steps)."""

    name = "onnx"

    def __init__(self, model: DreamLLM, graphs: dict[str, str | Path], providers: list | None = None,
                 threads: int | None = None):
        missing = [part for part in PARTS if part not in graphs]
        if missing:
            raise EngineError(f"OnnxComponents needs a graph for every part; missing: {', '.join(missing)}")
        self.model = model
        providers = providers or default_providers(model.device)
        parts = PARTS + (SPLIT_PARTS if all(part in graphs for part in SPLIT_PARTS) else ())
        self.sessions = {part: GraphSession(graphs[part], providers, threads) for part in parts}
        self.split_unet = CompiledSplitUnet(model, self._run_part, self.sessions[SPLIT_PARTS[0]].device) \
            if SPLIT_PARTS[0] in self.sessions else None
        self.provider = self.sessions["unet"].provider
        self.precision = "fp16" if self.sessions["unet"].input_dtypes["sample"] == torch.float16 else "fp32"

    def describe(self) -> str:
        import onnxruntime as ort

        cut = ", the UNet's cut for cache_interval" if self.split_unet is not None else ""
        return f"ONNX Runtime {ort.__version__} on {self.provider}, {self.precision} graphs (VAE fp32){cut}"

    # -------------------------------------------------------------------------------------------- pictures
    def unet(self, sample, timestep, encoder_hidden_states):
        session = self.sessions["unet"]
        out = session.run(
            {"sample": sample, "timestep": timestep_input(timestep, sample.shape[0], session.device),
             "encoder_hidden_states": encoder_hidden_states},
            {"out_sample": tuple(sample.shape)})
        return out["out_sample"].to(device=sample.device, dtype=sample.dtype)

    def _run_part(self, part, feeds, output_shapes):
        return self.sessions[part].run(feeds, output_shapes)

    def vae_decode(self, latents):
        n, _, h, w = latents.shape
        factor = self.model.head.vae_scale_factor
        channels = self.model.head.vae.config.out_channels
        out = self.sessions["vae_decoder"].run({"latents": latents}, {"images": (n, channels, h * factor, w * factor)})
        return out["images"].to(latents.device)

    @torch.no_grad()
    def encode_images(self, images):
        vision = self.model.vision
        pixels = vision.preprocess(images.to(self.model.device))  # the bicubic, antialiased resize stays in torch
        shape = (pixels.shape[0], vision.num_patches, self.model.hidden_size)
        out = self.sessions["vision"].run({"pixel_values": pixels}, {"image_features": shape})
        return out["image_features"].to(device=self.model.device, dtype=self.model.dtype)
