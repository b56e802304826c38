"""dreamgen.model.llama_cache on whichever transformers is installed: pyproject allows 5.17 and up, and 5.24 renamed
the decoder's cache argument (past_key_values -> cache), which 5.17-5.23 swallow without a word. The engine's own
paged LM (dreamgen/generation/lm.py) hands transformers no cache; these tests hold the keyword for whatever does.
CI runs this file in the GPU machine's simulation too (scripts/gpu_simulate.sh, transformers 5.17.0), so both
names are exercised."""
import torch
import transformers
from packaging.version import Version
from transformers import DynamicCache

from dreamgen.model.llama_cache import cache_argument, cache_keyword
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


def test_a_forward_on_a_cache_passed_by_the_keyword_equals_the_whole_sequence_at_once():
    decoder = tiny_model().llm.model
    embeds, mask, positions = inputs(tiny_model())
    with torch.no_grad():
        whole = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        cache = DynamicCache(config=decoder.config)
        decoder(inputs_embeds=embeds[:, :PREFIX], attention_mask=mask[:, :PREFIX], position_ids=positions[:, :PREFIX],
                use_cache=True, **cache_argument(cache))
        assert cache.get_seq_length() == PREFIX  # the keyword reached the layers: they filled the cache
        hidden = decoder(inputs_embeds=embeds[:, PREFIX:], attention_mask=mask, position_ids=positions[:, PREFIX:],
                         use_cache=True, **cache_argument(cache)).last_hidden_state
        alone = decoder(inputs_embeds=embeds[:, PREFIX:], attention_mask=mask[:, PREFIX:],
                        position_ids=positions[:, PREFIX:]).last_hidden_state
    assert cache.get_seq_length() == PREFIX + MORE  # the cache grew by the new tokens: the past was used
    torch.testing.assert_close(hidden, whole[:, PREFIX:], rtol=1e-4, atol=1e-5)
    assert (alone - hidden).abs().max() > 1e-2  # without the past the states differ: the test can tell
