"""python -m dreamgen.shapes OUT_DIR [--documents N] [--binding N] [--pictures N] [--seed S]: write the shapes world's
training set (documents for the DreamLLM, the binding stage's documents, and pictures of every pair for its VAE)."""
from __future__ import annotations

import argparse

from .dataset import write_binding, write_dataset, write_pictures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dreamgen.shapes", description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--documents", type=int, default=6000)
    parser.add_argument("--binding", type=int, default=0,
                        help="documents for the binding stage (two and three shapes, each asked its own words)")
    parser.add_argument("--pictures", type=int, default=0, help="pictures of the whole world for the VAE")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_dataset(args.out_dir, args.documents, seed=args.seed)
    print(f"wrote {args.documents} documents to {path}")
    if args.binding:
        print(f"wrote {args.binding} binding documents to {write_binding(args.out_dir, args.binding, seed=args.seed)}")
    if args.pictures:
        print(f"wrote {args.pictures} pictures to {write_pictures(args.out_dir, args.pictures, seed=args.seed)}")


if __name__ == "__main__":
    main()
