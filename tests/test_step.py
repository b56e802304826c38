"""The decode step as a GPU wants it: one graph with no host sync per bucket, equal to the eager step; about
fifteen kernels a layer (issue 31: the GPU-shaped step)."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.lm import Run
from dreamgen.generation.runner import ModelRunner, _Bucket
from dreamgen.model.sizes import SIZES
from dreamgen.model.tiny import build_tiny_model
from tests.helpers import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _decoding_runner(rows: int):
    """A runner whose `rows` documents have prompts of different lengths in the pool and decode next."""
    model = tiny_model()
    runner = ModelRunner(model, 160 * 16, GeneratorConfig(attention="flex", compile=False))
    hidden = model.llm.config.hidden_size
    g = torch.Generator().manual_seed(rows)
    runs = []
    for slot in range(rows):
        length = 5 + 13 * slot
        runner.open(slot, 200)
        with torch.no_grad():
            runner.forward(torch.randn(length, hidden, generator=g), [Run(slot, 0, length)], [])
        runs.append(Run(slot, length, 1))
    return runner, runs, torch.randn(rows, hidden, generator=g)


def test_the_bucket_step_compiles_into_one_graph_and_equals_the_eager_step():
    for rows, bucket_rows in ((3, 8), (9, 16)):
        runner, runs, embeds = _decoding_runner(rows)
        with torch.no_grad():
            eager_hidden, eager_logits = runner.forward(embeds, runs, list(range(rows)))  # gather + SDPA
            bucket = _Bucket(runner, bucket_rows)
            for run in runs:  # step back: the bucket writes the same positions again
                runner.pool.length[run.slot] -= 1
                runner.pool.stats.live_tokens -= 1
            runner._sync_pages()
            bucket.fill(runner, runs, embeds)
            explanation = torch._dynamo.explain(runner.bucket_compute)(*bucket._inputs())
            assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons
            torch._dynamo.reset()
            compiled = torch.compile(runner.bucket_compute, fullgraph=True, dynamic=False, backend="aot_eager")
            logits, hidden = compiled(*bucket._inputs())
        assert logits.shape[0] == bucket_rows and hidden.shape[0] == bucket_rows
        torch.testing.assert_close(hidden[:rows], eager_hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[:rows], eager_logits, rtol=1e-5, atol=1e-5)
        assert runner.pool.table  # padded rows wrote only the scratch page: the documents' rows are intact
        assert np.all(runner.pool.page_slot[runner.pool.scratch] == -1)


def test_a_decode_step_launches_at_most_twenty_ops_a_layer():
    step_ops = _bench("step_ops")
    model = build_tiny_model(seed=0, sizes=SIZES["small"])
    for temperature, top_p in ((0.0, 1.0), (0.9, 0.9)):
        per_layer, names, steps = step_ops.decode_ops(model, steps=3, temperature=temperature, top_p=top_p,
                                                        max_new_tokens=8)
        assert steps == 3 and per_layer <= 20, (per_layer, names)
        assert names["aten::scaled_dot_product_attention"] == 3 * 8  # one attention kernel a layer
        assert names["aten::linear"] == 3 * (2 * 8 + 1)  # qkv and gate/up fused, and the LM head
