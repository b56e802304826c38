"""Cost of a picture with the UNet's deep features reused across steps (issue 32, generation/deepcache.py): seconds
per picture at each cache interval, the same pictures (seeds, conditions, steps, scheduler) at each, painted
together as the engine paints them (one UNet call per step for all, then the VAE), on the torch backend and, with
--backends torch onnx, on ONNX Runtime too (the UNet's cut as three graphs: engines/split_graphs.py; exported into a
temporary engine cache first, not timed). Rounds alternate the settings so a busy machine weighs on all alike; each
setting's best round is reported. Also counts the rows that ran the deep part (the mid block, or the deep graph)
and the shallow one (conv_in, or the shallow-down graph); a full UNet call counts in both. --model small builds the
benchmarks' random small configuration (512 px pictures).

    python bench/deepcache.py                                  # shapes, DDPM 50, 8 pictures, intervals 1 2 3 5
    python bench/deepcache.py --intervals 1 2 --steps 20 --scheduler dpm-solver --rounds 5
    OMP_NUM_THREADS=1 python bench/deepcache.py --backends torch onnx --intervals 1 2 3 --steps 50 25 --rounds 5
    OMP_NUM_THREADS=1 python bench/deepcache.py --backends torch onnx --calls 30   # one UNet call: whole, cut, reused
    OMP_NUM_THREADS=1 python bench/deepcache.py --model small --pictures 1 --calls 3  # ... and reused at every cut
Quality is `dreamgen eval --cache-interval N` (docs/pictures.md has both).
"""
from __future__ import annotations

import argparse
import atexit
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamgen.generation import deepcache  # noqa: E402
from dreamgen.generation.diffusion import ImageRequest, denoise_group  # noqa: E402
from dreamgen.generation.generator import Generator  # noqa: E402
from dreamgen.model.loader import load_model  # noqa: E402
from dreamgen.model.sizes import SIZES  # noqa: E402
from dreamgen.model.tiny import build_tiny_model  # noqa: E402


class Rows:
    """Rows through a real block (a forward hook)."""

    def __init__(self, module):
        self.rows = 0
        module.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs, output):
        self.rows += (args[0] if args else kwargs["hidden_states"]).shape[0]


class GraphRows:
    """Rows through some ONNX Runtime sessions (their first input's batch), counted by wrapping their run."""

    def __init__(self, sessions):
        self.rows = 0
        for session in sessions:
            session.run = self._counting(session.run)

    def _counting(self, run):
        def counted(feeds, shapes):
            self.rows += next(iter(feeds.values())).shape[0]
            return run(feeds, shapes)
        return counted


def onnx_components(model, threads: int):
    from dreamgen.engines import EngineCache, OnnxComponents, ensure_onnx_graphs
    from dreamgen.engines.build import graph_files

    directory = tempfile.mkdtemp(prefix="bench-engines-")
    atexit.register(shutil.rmtree, directory, True)
    components = OnnxComponents(model, graph_files(ensure_onnx_graphs(model, "fp32", EngineCache(directory))),
                                threads=threads)
    assert components.split_unet is not None, "the ONNX graphs came without the UNet's cut"
    sessions = components.sessions
    return components, GraphRows([sessions["unet"], sessions["unet_deep"]]), \
        GraphRows([sessions["unet"], sessions["unet_shallow_down"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--pictures", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[50])
    parser.add_argument("--scheduler", default="ddpm")
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--backends", nargs="+", default=["torch"], choices=["torch", "onnx"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=0,
                        help="instead: time one UNet call of 2x--pictures rows, whole, cut at a full pass, and cut "
                             "reusing the deep feature (the shallow part alone), best of this many interleaved")
    args = parser.parse_args()

    if args.model in SIZES:  # a random model of the benchmarks' sizes (dreamgen/model/sizes.py)
        model = build_tiny_model(seed=0, sizes=SIZES[args.model], name=args.model)
    else:
        model = load_model(args.model)
    generator = Generator(model)
    head = model.head
    size = head.default_image_size
    uncond = generator.painter.unconditional()
    g = torch.Generator().manual_seed(0)
    conds = [uncond + 0.1 * torch.randn(uncond.shape, generator=g) for _ in range(args.pictures)]
    backends = {"torch": (generator.components, Rows(head.unet.mid_block), Rows(head.unet.conv_in))}
    if "onnx" in args.backends:
        backends["onnx"] = onnx_components(model, torch.get_num_threads())

    def paint(backend: str, steps: int, interval: int) -> float:
        components = backends[backend][0]
        requests = [ImageRequest(cond=c, uncond=uncond, seed=i, steps=steps, guidance=model.info.defaults.guidance,
                                 scheduler=args.scheduler, height=size, width=size, cache_interval=interval)
                    for i, c in enumerate(conds)]
        start = time.perf_counter()
        with torch.no_grad():
            denoise_group(requests, components.unet, components.vae_decode, head.scheduler_config,
                          head.unet.config.in_channels, head.vae_scale_factor, model.device, model.dtype,
                          split_unet=components.split_unet)
        return time.perf_counter() - start

    if args.calls:
        return time_calls(model, {b: backends[b][0] for b in args.backends}, 2 * args.pictures, args.calls)

    settings = [(b, steps, k) for b in args.backends for steps in args.steps for k in args.intervals]
    for backend in args.backends:
        paint(backend, min(args.steps), args.intervals[-1])  # warm-up
    best = {s: float("inf") for s in settings}
    counts = {}
    for _ in range(args.rounds):
        for setting in settings:
            _, deep, shallow = backends[setting[0]]
            deep.rows = shallow.rows = 0
            best[setting] = min(best[setting], paint(*setting))
            counts[setting] = (deep.rows, shallow.rows)
    versions = f"torch {torch.__version__}"
    if "onnx" in args.backends:
        import onnxruntime

        versions += f", onnxruntime {onnxruntime.__version__}"
    print(f"{args.model}: {args.pictures} pictures of {size} px, {args.scheduler}, guidance "
          f"{model.info.defaults.guidance}, {versions}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}; best of {args.rounds} rounds")
    print(f"{'backend':>7} {'steps':>5} {'interval':>8} {'s/picture':>10} {'vs 1':>6} {'deep rows':>10} "
          f"{'shallow rows':>13}")
    for backend, steps, k in settings:
        first = best[(backend, steps, args.intervals[0])]
        print(f"{backend:>7} {steps:>5} {k:>8} {best[(backend, steps, k)] / args.pictures:>10.4f} "
              f"{first / best[(backend, steps, k)]:>5.2f}x {counts[(backend, steps, k)][0]:>10} "
              f"{counts[(backend, steps, k)][1]:>13}")


def graph_runs(model, components, sample, t, cond) -> dict:
    from dreamgen.engines.split_graphs import SPLIT_PARTS, split_io, split_shapes

    rows, _, h, w = sample.shape
    shapes = {**split_shapes(model.head.unet, rows, h, w), "out_sample": tuple(sample.shape)}
    given = {"sample": sample, "timestep": t.float(), "encoder_hidden_states": cond}
    runs = {}
    for part in SPLIT_PARTS:
        io = split_io(model, part)
        feeds, outputs = {k: given[k] for k in io.inputs}, {k: shapes[k] for k in io.outputs}
        given.update(components.sessions[part].run(feeds, outputs))  # the next graph's inputs
        runs[("onnx", part)] = lambda part=part, feeds=feeds, outputs=outputs: \
            components.sessions[part].run(feeds, outputs)
    return runs


def time_calls(model, backends: dict, rows: int, calls: int) -> None:
    unet = model.head.unet.config
    side = model.head.default_image_size // model.head.vae_scale_factor
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(rows, unet.in_channels, side, side, generator=g)
    cond = torch.randn(rows, model.special.num_dream_queries, unet.cross_attention_dim, generator=g)
    t = torch.full((rows,), 500)
    every, none = torch.ones(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.bool)
    with torch.no_grad():
        _, deep = backends[next(iter(backends))].split_unet(sample, t, cond, every, None)
    runs = {}
    for name, c in backends.items():
        runs[(name, "whole")] = lambda c=c: c.unet(sample, t, cond)
        runs[(name, "cut, full pass")] = lambda c=c: c.split_unet(sample, t, cond, every, None)
        runs[(name, "cut, reused")] = lambda c=c: c.split_unet(sample, t, cond, none, deep)
        if hasattr(c, "sessions"):  # ONNX Runtime: each graph of the cut alone, on the tensors it is given
            runs.update(graph_runs(model, c, sample, t, cond))
    unet_module = model.head.unet
    for cut in range(1, len(deepcache.down_layers(unet_module)) + 1):  # torch, reusing at each place the UNet can be cut
        _, kept = deepcache.split_unet(unet_module, sample, t, cond, every, None, cut)
        runs[("torch", f"reused, cut {cut}")] = lambda cut=cut, kept=kept: \
            deepcache.split_unet(unet_module, sample, t, cond, none, kept, cut)
    best = {k: float("inf") for k in runs}
    with torch.no_grad():
        for _ in range(calls):
            for k, run in runs.items():
                start = time.perf_counter()
                run()
                best[k] = min(best[k], time.perf_counter() - start)
    print(f"one UNet call of {rows} rows at {side}x{side} latents, {torch.get_num_threads()} thread(s); "
          f"best of {calls}")
    for (name, what), seconds in best.items():
        print(f"{name:>7} {what:<15} {seconds * 1000:8.2f} ms  {seconds / best[(name, 'whole')]:5.0%} of whole")


if __name__ == "__main__":
    main()
