"""The keyword transformers' LLaMA decoder takes its KV cache by, whichever version is installed.

transformers 5.24 renamed the decoder's `past_key_values` argument to `cache` (the old name is deprecated until
5.40). Before 5.24 the decoder layers take `**kwargs`, so `cache=` is swallowed without a word and the step runs
with no past at all: the keys of the new tokens alone, then `'NoneType' object has no attribute 'transpose'`
further down, or silently wrong text. Every caller that hands the decoder a cache asks here, so the name is read
from the installed signature once.
"""
from __future__ import annotations

import functools
import inspect

from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel

NAMES = ("cache", "past_key_values")  # newest first


@functools.cache
def cache_keyword() -> str:
    """`cache` (transformers >= 5.24) or `past_key_values` (before), as LlamaModel and its layers both name it."""
    found = []
    for forward in (LlamaModel.forward, LlamaDecoderLayer.forward):
        parameters = inspect.signature(forward).parameters
        found.append(next((name for name in NAMES if name in parameters), None))
    if found[0] is None or found[0] != found[1]:
        import transformers

        raise RuntimeError(f"transformers {transformers.__version__}: LlamaModel.forward takes its cache as "
                           f"{found[0]!r}, LlamaDecoderLayer.forward as {found[1]!r}; dreamgen knows {NAMES}")
    return found[0]


def cache_argument(cache) -> dict:
    """{keyword: cache}, to splat into a call of LlamaModel or one of its decoder layers."""
    return {cache_keyword(): cache}
