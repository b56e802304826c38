"""DreamLLM's special tokens and the fixed-length blocks built from them.

Ids come from the checkpoint's `special_tokens2ids_dict` (released tokenizer: vocab 32008); bos/eos come from the
tokenizer, because the released config.json carries wrong `bos_token_id`/`eos_token_id`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..prompts.templates import IMAGE_PLACEHOLDER  # a prompt's text, so defined with the templates

# The released tokenizer's ids: the reference we check every checkpoint against.
RELEASED_IDS = {
    "[PAD]": 32000, "<im_start>": 32001, "<dream_end>": 32002, "<dream_start>": 32003,
    "<im_patch>": 32004, "<im_end>": 32005, "<image>": 32006, "<dream>": 32007,
}
# `<image>` and `<dream>` are text placeholders only; the model never sees them.
__all__ = ["IMAGE_PLACEHOLDER", "RELEASED_IDS", "SpecialTokens"]


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    pad: int
    im_start: int
    im_end: int
    im_patch: int
    dream_start: int
    dream_end: int
    num_dream_queries: int  # 64 in the released model
    num_image_patches: int  # 256 for CLIP ViT-L/14 at 224 px (CLS dropped)

    @property
    def dream_block_len(self) -> int:
        """`<dream_start>` + Q x `<im_patch>` (replaced by the queries) + `<dream_end>`."""
        return self.num_dream_queries + 2

    @property
    def image_block_len(self) -> int:
        """`<im_start>` + P x `<im_patch>` (replaced by projected CLIP features) + `<im_end>`."""
        return self.num_image_patches + 2

    @property
    def image_cost(self) -> int:
        """Context positions one generated image takes: dream block + image block (324 at 7B)."""
        return self.dream_block_len + self.image_block_len

    def dream_block(self) -> list[int]:
        return [self.dream_start] + [self.im_patch] * self.num_dream_queries + [self.dream_end]

    def image_block(self) -> list[int]:
        return [self.im_start] + [self.im_patch] * self.num_image_patches + [self.im_end]

    @classmethod
    def from_ids(cls, ids: dict, bos: int, eos: int, num_dream_queries: int, num_image_patches: int):
        """`ids` maps token strings to ids, as `special_tokens2ids_dict` does (nested dicts are flattened)."""
        flat = {}
        for key, value in ids.items():
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        return cls(bos=bos, eos=eos, pad=flat["[PAD]"], im_start=flat["<im_start>"], im_end=flat["<im_end>"],
                   im_patch=flat["<im_patch>"], dream_start=flat["<dream_start>"], dream_end=flat["<dream_end>"],
                   num_dream_queries=num_dream_queries, num_image_patches=num_image_patches)
