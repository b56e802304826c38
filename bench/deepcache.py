"""Cost of a picture with the UNet's deep features reused across steps (issue 32, generation/deepcache.py): seconds
per picture at each cache interval, the same pictures (seeds, conditions, steps, scheduler) at each, painted
together as the engine paints them (one UNet call per step for all, then the VAE), on the torch backend. Rounds
alternate the intervals so a busy machine weighs on all alike; each interval's best round is reported. Also counts
the rows that ran the deep blocks (the mid block) and the shallow ones (the first down block).

    python bench/deepcache.py                                  # shapes, DDPM 50, 8 pictures, intervals 1 2 3 5
    python bench/deepcache.py --intervals 1 2 --steps 20 --scheduler dpm-solver --rounds 5
Quality is `dreamgen eval --cache-interval N` (docs/pictures.md has both).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamgen.generation.diffusion import ImageRequest, denoise_group  # noqa: E402
from dreamgen.generation.generator import Generator  # noqa: E402
from dreamgen.model.loader import load_model  # noqa: E402


class Rows:
    """Rows through a real block (a forward hook)."""

    def __init__(self, module):
        self.rows = 0
        module.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs, output):
        self.rows += (args[0] if args else kwargs["hidden_states"]).shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--pictures", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scheduler", default="ddpm")
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    model = load_model(args.model)
    generator = Generator(model)
    components, head = generator.components, model.head
    size = head.default_image_size
    uncond = generator.painter.unconditional()
    g = torch.Generator().manual_seed(0)
    conds = [uncond + 0.1 * torch.randn(uncond.shape, generator=g) for _ in range(args.pictures)]
    deep, shallow = Rows(head.unet.mid_block), Rows(head.unet.down_blocks[0])

    def paint(interval: int) -> float:
        requests = [ImageRequest(cond=c, uncond=uncond, seed=i, steps=args.steps, guidance=model.info.defaults.guidance,
                                 scheduler=args.scheduler, height=size, width=size, cache_interval=interval)
                    for i, c in enumerate(conds)]
        start = time.perf_counter()
        with torch.no_grad():
            denoise_group(requests, components.unet, components.vae_decode, head.scheduler_config,
                          head.unet.config.in_channels, head.vae_scale_factor, model.device, model.dtype,
                          split_unet=components.split_unet)
        return time.perf_counter() - start

    paint(1)  # warm-up
    best = {k: float("inf") for k in args.intervals}
    counts = {}
    for _ in range(args.rounds):
        for k in args.intervals:
            deep.rows = shallow.rows = 0
            best[k] = min(best[k], paint(k))
            counts[k] = (deep.rows, shallow.rows)
    print(f"{args.model}: {args.pictures} pictures of {size} px, {args.scheduler} {args.steps} steps, guidance "
          f"{model.info.defaults.guidance}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}; best of {args.rounds} rounds")
    print(f"{'interval':>8} {'s/picture':>10} {'vs 1':>6} {'deep rows':>10} {'shallow rows':>13}")
    for k in args.intervals:
        print(f"{k:>8} {best[k] / args.pictures:>10.4f} {best[args.intervals[0]] / best[k]:>5.2f}x "
              f"{counts[k][0]:>10} {counts[k][1]:>13}")


if __name__ == "__main__":
    main()
