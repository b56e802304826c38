"""Work-launching aten ops per decode step per layer, counted by torch.profiler (the issue "an engine shaped
for the GPU"): whole decode steps of the small configuration with 16 documents decoding, top-level aten ops
that are not views or reshapes, divided by steps and layers. Each is a kernel launch on a GPU.

    python bench/step_ops.py                 # greedy and sampled (temperature 0.9, top_p 0.9)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamgen.generation.generator import DocumentRequest, Generator  # noqa: E402
from dreamgen.model.sizes import SIZES  # noqa: E402
from dreamgen.model.tiny import build_tiny_model  # noqa: E402
from dreamgen.params import GenerationParams  # noqa: E402

# Ops that launch no work: they only reinterpret a tensor's shape or strides.
VIEWS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::slice", "aten::select",
         "aten::transpose", "aten::t", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::permute",
         "aten::alias", "aten::detach", "aten::lift_fresh", "aten::unbind", "aten::split", "aten::split_with_sizes",
         "aten::chunk", "aten::narrow", "aten::_unsafe_view", "aten::view_as", "aten::expand_as", "aten::flatten",
         "aten::unflatten", "aten::resolve_conj", "aten::resolve_neg", "aten::empty", "aten::empty_strided",
         "aten::is_nonzero", "aten::lift", "aten::result_type", "aten::detach_"}


def top_level_ops(prof) -> list[str]:
    """Names of the top-level aten ops (no aten parent) that are not views."""
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    names = []
    for e in events:
        parent, nested = e.cpu_parent, False
        while parent is not None:
            if parent.name.startswith("aten::"):
                nested = True
                break
            parent = parent.cpu_parent
        # aten::to of a tensor already of that dtype and device returns it as is; a real conversion runs
        # aten::_to_copy under it, and counts
        no_op = e.name == "aten::to" and not e.cpu_children
        if not nested and e.name not in VIEWS and not no_op:
            names.append(e.name)
    return names


def decode_ops(model, documents: int = 16, steps: int = 8, temperature: float = 0.0, top_p: float = 1.0,
               max_new_tokens: int = 200):
    """(ops per step per layer, Counter of op names) over `steps` steps where every document decodes."""
    from collections import Counter

    layers = model.llm.config.num_hidden_layers
    gen = Generator(model)
    requests = [DocumentRequest(f"topic {i}", GenerationParams(seed=i, max_new_tokens=max_new_tokens, max_images=0,
                                                               temperature=temperature, top_p=top_p))
                for i in range(documents)]
    counted, names, state = [], Counter(), {"step": 0}
    original = gen._step

    def step(runs, runner):
        decoding = len(runs) == documents and all(n == 1 for _, n in runs)
        if not decoding or state["step"] >= steps:
            return original(runs, runner)
        state["step"] += 1
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            after = original(runs, runner)
        ops = top_level_ops(prof)
        counted.append(len(ops))
        names.update(ops)
        return after

    gen._step = step
    gen.run(requests, on_document=lambda i, d: None, slots=documents)
    if not counted:
        raise RuntimeError("no step had every document decoding")
    return sum(counted) / len(counted) / layers, names, len(counted)


def main() -> None:
    torch.set_num_threads(1)
    model = build_tiny_model(seed=0, sizes=SIZES["small"])
    print(f"small configuration ({model.llm.config.num_hidden_layers} layers), 16 documents decoding")
    for name, temperature, top_p in (("greedy", 0.0, 1.0), ("sampled", 0.9, 0.9)):
        per_layer, names, steps = decode_ops(model, temperature=temperature, top_p=top_p)
        print(f"  {name:8} {per_layer:6.2f} ops per step per layer ({steps} steps)")
        print("           " + ", ".join(f"{n.removeprefix('aten::')} {c // steps}" for n, c in names.most_common()))


if __name__ == "__main__":
    main()
