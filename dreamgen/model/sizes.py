"""The sizes of the random models dreamgen builds offline (model/tiny.py): names only, no torch."""
from __future__ import annotations

TINY_SIZES = dict(hidden=64, layers=2, heads=4, queries=8, clip_hidden=32, clip_image=32, clip_patch=8,
                  cross_dim=32, latent=8, max_positions=1024, unet_blocks=(32, 64))
# Sized so compute dominates (the benchmarks' "small" configuration); same classes, same structure.
SMALL_SIZES = dict(hidden=512, layers=8, heads=8, queries=16, clip_hidden=128, clip_image=64, clip_patch=8,
                   cross_dim=256, latent=64, max_positions=2048, unet_blocks=(64, 128))
SIZES = {"tiny": TINY_SIZES, "small": SMALL_SIZES}
MODEL_SIZES = tuple(SIZES)
