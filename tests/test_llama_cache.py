"""The LM step with a past, on whichever transformers is installed: pyproject allows 5.17 and up, and 5.24 renamed the
decoder's cache argument (past_key_values -> cache), which 5.17-5.23 swallow without a word. CI runs this file in
the GPU machine's simulation too (scripts/gpu_simulate.sh, transformers 5.17.0), so both names are exercised."""
import torch
import transformers
from packaging.version import Version

from dreamgen.engines.graphs import graph_module
from dreamgen.generation.components import TorchComponents
from dreamgen.model.llama_cache import cache_keyword
from tests.helpers import tiny_model

PREFIX, MORE = 6, 3


def inputs(model, batch=2):
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(batch, PREFIX + MORE, model.hidden_size, generator=g) * 0.5
    mask = torch.ones(batch, PREFIX + MORE, dtype=torch.long)
    positions = torch.arange(PREFIX + MORE).expand(batch, -1)
    return embeds, mask, positions


def test_the_keyword_is_the_one_the_installed_transformers_names():
    expected = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    assert cache_keyword() == expected


def test_a_step_on_a_past_equals_the_whole_sequence_at_once():
    model = tiny_model()
    components = TorchComponents(model)
    embeds, mask, positions = inputs(model)
    whole_logits, whole, _ = components.lm_step(embeds, mask, positions, None)
    _, _, past = components.lm_step(embeds[:, :PREFIX], mask[:, :PREFIX], positions[:, :PREFIX], None)
    assert len(past) == model.llm.config.num_hidden_layers and past[0][0].shape[2] == PREFIX
    logits, hidden, present = components.lm_step(embeds[:, PREFIX:], mask, positions[:, PREFIX:], past)
    assert present[0][0].shape[2] == PREFIX + MORE  # the cache grew by the new tokens: the past was used
    torch.testing.assert_close(hidden, whole[:, PREFIX:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, whole_logits, rtol=1e-4, atol=1e-4)
    alone = components.lm_step(embeds[:, PREFIX:], mask[:, PREFIX:], positions[:, PREFIX:], None)[1]
    assert (alone - hidden).abs().max() > 1e-2  # without the past the states differ: the test can tell


def test_the_exported_lm_step_graph_uses_its_past():
    model = tiny_model()
    embeds, mask, positions = inputs(model)
    whole = TorchComponents(model).lm_step(embeds, mask, positions, None)[1]
    _, _, past = TorchComponents(model).lm_step(embeds[:, :PREFIX], mask[:, :PREFIX], positions[:, :PREFIX], None)
    with graph_module(model, "lm_step", "fp32") as graph, torch.no_grad():
        out = graph(embeds[:, PREFIX:], mask, positions[:, PREFIX:], *[t for layer in past for t in layer])
    assert len(out) == 2 + 2 * model.llm.config.num_hidden_layers
    assert out[2].shape[2] == PREFIX + MORE
    torch.testing.assert_close(out[1], whole[:, PREFIX:], rtol=1e-4, atol=1e-5)
