"""Does a prompt fit the model's context? Counted as the generator encodes it: `<s>`, the instruction under its
template and chat format, and an image block per input picture (text-to-image: `<s>`, the caption, one dream block).

The model's side is a ModelContext (dreamgen.model.card.ModelCard reads one from a checkpoint's small files, without
torch); it is passed in, because this room may not import the model's.
"""
from __future__ import annotations

import unicodedata
from typing import Protocol

from ..params import GenerationParams
from .templates import IMAGE_PLACEHOLDER, chat_text, render


class ModelContext(Protocol):
    max_positions: int  # every token, dream block and image block takes positions of it
    dream_block_len: int
    image_block_len: int

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the generator feeds it (no `<s>`; special tokens spelled in it are plain text)."""


def prompt_length(context: ModelContext, prompt: str, params: GenerationParams, images: int = 0,
                  image_only: bool = False) -> int:
    """Context positions the prompt takes before the model writes its first token."""
    return _length(context.count_tokens, context, prompt, params, images, image_only)


def _length(count, context: ModelContext, prompt: str, params: GenerationParams, images: int,
            image_only: bool) -> int:
    if image_only:
        return 1 + count(prompt) + context.dream_block_len
    instruction = render(params.template, prompt)
    if images and IMAGE_PLACEHOLDER not in instruction:
        instruction = (IMAGE_PLACEHOLDER + "\n") * images + instruction
    pieces = chat_text(params.chat, instruction).split(IMAGE_PLACEHOLDER)
    return 1 + sum(count(piece) for piece in pieces) + (len(pieces) - 1) * context.image_block_len


def most_tokens(text: str) -> int:
    """At least as many tokens as any tokenizer makes of `text` that spends a byte or more of its normalised text
    on each token (BPE with byte fallback, byte-level BPE, WordPiece; normalisers up to NFKC, which can lengthen
    a text), plus one for a prefix space. Cheap, so most prompts are known to fit without being tokenized."""
    if not text:
        return 0
    return max(len(text.encode("utf-8")), len(unicodedata.normalize("NFKC", text).encode("utf-8"))) + 1


def context_problem(context: ModelContext, prompt: str, params: GenerationParams, images: int = 0,
                    image_only: bool = False) -> str | None:
    """Why the prompt does not fit (with the counts), or None. It must leave room for one written token, or a
    text-to-image caption for nothing more."""
    room = 0 if image_only else 1
    if _length(most_tokens, context, prompt, params, images, image_only) + room <= context.max_positions:
        return None  # fits even if every byte were a token: no need to tokenize (100,000 prompts in a few s)
    length = prompt_length(context, prompt, params, images, image_only)
    if length + room <= context.max_positions:
        return None
    if image_only:
        counted = "with its dream block"
    elif images:
        counted = f"with its template, chat format and {images} input image{'s' if images > 1 else ''}"
    else:
        counted = "with its template and chat format"
    if length > context.max_positions:
        return f"is {length} tokens {counted}, more than the model's context of {context.max_positions}"
    return f"is {length} tokens {counted}: all of the model's context of {context.max_positions}, none left to write"
