"""The Components protocol on TensorRT engines built from the ONNX graphs (TensorRT 10+ Python API).

GPU-only and untested on the machines this project is built on (no GPU, and NVIDIA's package index is out of
reach): it is kept small and written call for call against NVIDIA's documented API so it can be read against it.
`import tensorrt` happens only when this backend is asked for; a missing or broken install, or no GPU, is one
EngineError that says what is missing and how to get it.

    build   OnnxParser -> strongly typed network (precision comes from the graph; the VAE graph is fp32)
            -> optimization profiles (profiles.py) -> timing cache shared by every build on this GPU -> plan file
    run     one execution context per profile; inputs and outputs are torch CUDA tensors bound by address
            (set_tensor_address) and run with execute_async_v3 on torch's current stream. The UNet, whose shapes
            hold for every step of a picture, is replayed from a captured CUDA graph into preallocated buffers.
            The UNet's cut (split_graphs.py, for cache_interval) runs plainly: its deep graph sees a different
            subset of rows from step to step, so its shapes do not hold for a graph to replay.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import EngineError
from ..model.dreamllm import DreamLLM
from .build import WITHOUT_CUT, ensure_onnx_graphs
from .cache import CachedEngine, CacheEntry, EngineCache, tensorrt_entry
from .export import GRAPH_FILE
from .graphs import PARTS, part_precision, timestep_input
from .split_graphs import SPLIT_PARTS, CompiledSplitUnet
from .profiles import EngineLimits, outside_profile, profiles_for

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'dreamgen[tensorrt]' --extra-index-url https://pypi.nvidia.com"
ENGINE_FILE = "engine.plan"
BUILDER_FLAGS = {"strongly_typed": True, "optimization_level": 3}  # keyed: a change makes new engines


# ------------------------------------------------------------------------------------------------ availability
def import_tensorrt():
    """The tensorrt module, or an EngineError naming what is wrong and how to install it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer cannot be loaded
        raise EngineError(f"TensorRT backend unavailable: cannot import tensorrt ({type(e).__name__}: "
                          f"{' '.join(str(e).split())}); install it with {INSTALL_HINT}") from None
    return trt


def tensorrt_problem(model: DreamLLM | None = None) -> str | None:
    """Why the TensorRT backend cannot run here (import, GPU, model device), or None when it can."""
    try:
        import_tensorrt()
    except EngineError as e:
        return str(e)
    if not torch.cuda.is_available():
        return "TensorRT backend unavailable: torch sees no CUDA GPU on this machine"
    if model is not None and model.device.type != "cuda":
        return f"TensorRT backend needs the model on a GPU (--device cuda); it is on {model.device}"
    return None


def require_tensorrt(model: DreamLLM | None = None):
    problem = tensorrt_problem(model)
    if problem:
        raise EngineError(problem)
    return import_tensorrt()


def compute_capability(device: torch.device | None = None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


# ------------------------------------------------------------------------------------------------ building
def build_engine(trt, onnx_path: Path, plan_path: Path, profiles: list[dict], timing_cache: Path,
                 flags: dict = BUILDER_FLAGS) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads model.onnx.data beside the graph by itself
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = flags["optimization_level"]
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    # A profile bounds the dynamic inputs only (a static one has the one shape the graph was traced with).
    dynamic = {network.get_input(i).name for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)}
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (smallest, usual, largest) in shapes.items():
            if name in dynamic:
                profile.set_shape(name, smallest, usual, largest)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    plan_path.write_bytes(memoryview(plan))
    # The timing cache makes the next build (another part, another profile) much faster; replaced atomically
    # because workers may build at the same time.
    partial = timing_cache.with_name(f"{timing_cache.name}.{os.getpid()}")
    partial.write_bytes(memoryview(config.get_timing_cache().serialize()))
    os.replace(partial, timing_cache)


def ensure_tensorrt_engines(model: DreamLLM, precision: str = "fp16", cache: EngineCache | None = None,
                            no_build: bool = False, limits: EngineLimits | None = None) -> dict[str, CachedEngine]:
    """Every part's engine for this GPU and TensorRT version, built from the model's ONNX graphs.
    limits None: whatever `dreamgen engines build` left in the cache for these graphs (the newest set), else
    built with the default limits; explicit limits: exactly those, from the cache or built now."""
    trt = require_tensorrt()
    cache = cache or EngineCache()
    graphs = ensure_onnx_graphs(model, precision, cache, no_build=no_build, flavor="portable")
    capability = compute_capability(model.device if model.device.type == "cuda" else None)
    parts = tuple(graphs)  # model_parts: the UNet's cut among them where it could be exported (cache_interval)
    if limits is None:
        found = built_tensorrt_engines(cache, graphs, trt.__version__, capability)
        if all(part in found for part in parts):
            return found
        limits = EngineLimits()
    timing_cache = cache.root / "tensorrt" / f"timing-{trt.__version__}-{capability}.cache"
    hint = (f"build them with: dreamgen engines build --model {model.info.name} --backend tensorrt "
            f"--precision {precision}")
    engines = {}
    for part in parts:
        profiles = profiles_for(model, part, limits)
        entry = tensorrt_entry(graphs[part].content_sha256, part, part_precision(part, precision), trt.__version__,
                               capability, profiles, BUILDER_FLAGS, label=model.info.name)

        def build(directory, part=part, profiles=profiles):
            timing_cache.parent.mkdir(parents=True, exist_ok=True)
            build_engine(trt, graphs[part].file(GRAPH_FILE), directory / ENGINE_FILE, profiles, timing_cache)
            return {"engine_file": ENGINE_FILE, "limits": limits.as_dict(model), "onnx": str(graphs[part].path)}

        try:
            engines[part] = cache.ensure(entry, build, no_build=no_build, hint=hint)
        except EngineError as e:
            if part not in SPLIT_PARTS:
                raise
            log.warning("%s; %s", e, WITHOUT_CUT)
            return {p: engine for p, engine in engines.items() if p not in SPLIT_PARTS}  # the cut whole or not at all
    return engines


def built_tensorrt_engines(cache: EngineCache, graphs: dict[str, CachedEngine], trt_version: str | None = None,
                           capability: str | None = None) -> dict[str, CachedEngine]:
    """Sound engines in the cache built from these ONNX graphs (and, when given, by this TensorRT version for
    this GPU), whatever limits they were built with: the newest per part."""
    wanted = {cached.content_sha256: part for part, cached in graphs.items()}
    found: dict[str, CachedEngine] = {}
    for _, manifest, _ in cache.listing():
        if not manifest or manifest.get("backend") != "tensorrt" or not isinstance(manifest.get("key_inputs"), dict):
            continue
        inputs = manifest["key_inputs"]
        part = wanted.get(inputs.get("onnx_sha256"))
        if part is None or inputs.get("builder_flags") != BUILDER_FLAGS:
            continue
        if trt_version and inputs.get("tensorrt_version") != trt_version:
            continue
        if capability and inputs.get("compute_capability") != capability:
            continue
        keyed = {k: v for k, v in inputs.items() if k not in ("backend", "part", "precision")}
        entry = CacheEntry("tensorrt", part, inputs.get("precision"), keyed, manifest.get("label", ""))
        cached = cache.lookup(entry)
        if cached is None:
            continue
        if part not in found or cached.manifest.get("created", "") > found[part].manifest.get("created", ""):
            found[part] = cached
    return found


# ------------------------------------------------------------------------------------------------ running
class EngineRunner:
    """One engine, one execution context per optimization profile, run on torch's current CUDA stream."""

    def __init__(self, trt, plan: Path, device: torch.device):
        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)  # must outlive the engine
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT cannot load {plan} (built by another TensorRT version or for another GPU?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        to_torch = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                    trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}
        stream = torch.cuda.current_stream(device).cuda_stream
        self.contexts = []
        for index in range(self.engine.num_optimization_profiles):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, stream)
            self.contexts.append(context)
        dynamic = [n for n in self.inputs if -1 in tuple(self.engine.get_tensor_shape(n))]
        self.profiles = [{n: [tuple(s) for s in self.engine.get_tensor_profile_shape(n, index)] for n in dynamic}
                         for index in range(len(self.contexts))]
        self._placeholder = torch.zeros(1, device=device)  # an address for zero-size tensors

    def bind(self, feeds: dict[str, torch.Tensor], profile: int = 0) -> dict[str, torch.Tensor]:
        """Set input shapes and addresses; allocate the outputs and set theirs. The feeds must stay alive
        until the run has finished on the stream."""
        problem = outside_profile({n: tuple(t.shape) for n, t in feeds.items()}, self.profiles[profile])
        if problem:
            raise EngineError(f"TensorRT engine profile {profile}: {problem}; rebuild the engines with larger "
                              f"limits (dreamgen engines build --backend tensorrt --max-batch N --image-size S)")
        context = self.contexts[profile]
        for name in self.inputs:
            tensor = feeds[name]
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr() or self._placeholder.data_ptr())
        outputs = {}
        for name in self.outputs:
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                        device=self.device)
            context.set_tensor_address(name, outputs[name].data_ptr() or self._placeholder.data_ptr())
        return outputs

    def prepare(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: t.to(device=self.device, dtype=self.dtypes[n]).contiguous() for n, t in feeds.items()}

    def run(self, feeds: dict[str, torch.Tensor], profile: int = 0) -> dict[str, torch.Tensor]:
        feeds = self.prepare(feeds)
        outputs = self.bind(feeds, profile)
        if not self.contexts[profile].execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        return outputs  # freed feeds are reused only by later work on the same stream, after this run


class CudaGraphRunner:
    """Replays one engine's run from a CUDA graph while the input shapes stay the same (every UNet step of a
    picture), copying inputs into preallocated buffers. A new shape re-captures; a capture that fails falls
    back to plain runs for good, with a log line."""

    def __init__(self, runner: EngineRunner):
        self.runner = runner
        self.shapes = None
        self.graph = None
        self.failed = False

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.failed:
            return self.runner.run(feeds)
        shapes = {n: tuple(t.shape) for n, t in feeds.items()}
        if shapes != self.shapes:
            try:
                self._capture(feeds, shapes)
            except Exception as e:  # the plain path still works; losing the graph only costs launch overhead
                log.warning("CUDA graph capture of a TensorRT engine failed (%s: %s); running without",
                            type(e).__name__, e)
                self.failed = True
                return self.runner.run(feeds)
        for name, tensor in feeds.items():
            self.static_inputs[name].copy_(tensor)
        self.graph.replay()
        return {n: t.clone() for n, t in self.static_outputs.items()}  # the buffers are overwritten next step

    def _capture(self, feeds, shapes) -> None:
        runner = self.runner
        self.static_inputs = runner.prepare(feeds)
        self.static_outputs = runner.bind(self.static_inputs)
        context = runner.contexts[0]
        stream = torch.cuda.Stream(runner.device)
        stream.wait_stream(torch.cuda.current_stream(runner.device))
        with torch.cuda.stream(stream):
            # One plain run first: TensorRT finishes its shape-dependent setup outside the capture.
            context.execute_async_v3(stream.cuda_stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                context.execute_async_v3(stream.cuda_stream)
        torch.cuda.current_stream(runner.device).wait_stream(stream)
        self.graph, self.shapes = graph, shapes


class TensorRTComponents:
    """DreamLLM's picture side (UNet, VAE decoder, vision encoder) on TensorRT engines; the LM, embeddings,
    queries and projectors stay on the torch model. Given the engines of the UNet's cut too, it has a `split_unet`
    (cache_interval); without them split_unet is None and such pictures take full steps."""

    name = "tensorrt"

    def __init__(self, model: DreamLLM, engines: dict[str, str | Path], cuda_graphs: bool = True):
        trt = require_tensorrt(model)
        missing = [part for part in PARTS if part not in engines]
        if missing:
            raise EngineError(f"TensorRTComponents needs an engine for every part; missing: {', '.join(missing)}")
        self.model = model
        parts = PARTS + (SPLIT_PARTS if all(part in engines for part in SPLIT_PARTS) else ())
        self.runners = {part: EngineRunner(trt, Path(engines[part]), model.device) for part in parts}
        self.split_unet = CompiledSplitUnet(model, self._run_part, model.device) if SPLIT_PARTS[0] in self.runners \
            else None
        self._unet = CudaGraphRunner(self.runners["unet"]) if cuda_graphs else self.runners["unet"].run
        self.version = trt.__version__

    def describe(self) -> str:
        precision = "fp16" if self.runners["unet"].dtypes["sample"] == torch.float16 else "fp32"
        gpu = torch.cuda.get_device_name(self.model.device)
        return f"TensorRT {self.version} on {gpu}, {precision} engines (VAE fp32)"

    @torch.no_grad()
    def unet(self, sample, timestep, encoder_hidden_states):
        out = self._unet({"sample": sample, "timestep": timestep_input(timestep, sample.shape[0], self.model.device),
                          "encoder_hidden_states": encoder_hidden_states})
        return out["out_sample"].to(sample.dtype)

    def _run_part(self, part, feeds, output_shapes):
        return self.runners[part].run(feeds)  # TensorRT sizes its outputs itself

    @torch.no_grad()
    def vae_decode(self, latents):
        return self.runners["vae_decoder"].run({"latents": latents})["images"]

    @torch.no_grad()
    def encode_images(self, images):
        pixels = self.model.vision.preprocess(images.to(self.model.device))
        features = self.runners["vision"].run({"pixel_values": pixels})["image_features"]
        return features.to(self.model.dtype)
