"""An offline tokenizer with the released special tokens at the released ids.

LLaMA-style: metaspace pre-tokenisation, BPE with byte fallback (`<0x00>`..`<0xFF>`), `<unk>`0 `<s>`1 `</s>`2,
the base vocabulary padded to 32000 with unused pieces, then the eight DreamLLM tokens at 32000..32007 (or, for a smaller base vocabulary, right after it in the same order).
Trained deterministically on a corpus the caller gives, so checkpoints that ship it need no download.
"""
from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .special_tokens import RELEASED_IDS

BASE_VOCAB = 32000
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def build_tokenizer(corpus: list[str], base_vocab: int = BASE_VOCAB, merges_vocab: int = 4000,
                    split_punctuation: bool = False) -> PreTrainedTokenizerFast:
    """Train a BPE on `corpus` (at most `merges_vocab` pieces), pad it to `base_vocab`, add DreamLLM's tokens.
    `split_punctuation` makes punctuation pieces of their own, so a small vocabulary has one piece per word
    ("circle" in "a circle." and "a circle on" alike)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    if split_punctuation:
        tok.pre_tokenizer = pre_tokenizers.Sequence([tok.pre_tokenizer, pre_tokenizers.Punctuation("isolated")])
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=merges_vocab, special_tokens=specials, show_progress=False, min_frequency=1)
    tok.train_from_iterator(corpus, trainer=trainer)

    # Lay the vocabulary out as LLaMA does: specials, the 256 byte pieces (plain pieces, so decoding keeps
    # them), the trained pieces, then unused pieces up to base_vocab so DreamLLM's tokens land on the released ids.
    spec = json.loads(tok.to_str())
    trained = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in specials]
    pieces = specials + BYTE_TOKENS + [t for t in trained if t not in BYTE_TOKENS]
    if len(pieces) > base_vocab:
        raise ValueError(f"trained vocabulary ({len(pieces)}) exceeds base_vocab ({base_vocab})")
    pieces += [f"<unused_{i}>" for i in range(len(pieces), base_vocab)]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(pieces)}
    tok = Tokenizer.from_str(json.dumps(spec))

    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      pad_token="[PAD]", padding_side="left")
    ordered = sorted(RELEASED_IDS, key=RELEASED_IDS.get)  # [PAD] first, then the others in id order
    wrapped.add_special_tokens({"additional_special_tokens": [t for t in ordered if t != "[PAD]"]})
    for token, released in RELEASED_IDS.items():
        expected = released - BASE_VOCAB + base_vocab  # the released order, after whatever base vocabulary
        got = wrapped.convert_tokens_to_ids(token)
        if got != expected:
            raise AssertionError(f"tokenizer put {token} at {got}, expected {expected}")
    return wrapped
