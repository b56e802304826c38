"""An optional extra loss: read what a picture shows back from its condition.

The diffusion loss alone can leave an attribute faint in the condition when the UNet lowers its loss nearly as much
without it: a shape's place moves a few latent pixels, its colour moves them all, and the shipped model learned
colour well and position not at all. Where the training data labels its images ({"labels": {"position": ...}}),
one linear head per attribute reads the flattened condition (Q x cross_dim) and its cross-entropy, weighted by
loss.w_readout, asks the LLM and the queries to put that attribute into the condition in a form a linear map (such
as the UNet's cross-attention keys and values) can read. The heads are scaffolding, not part of the model: they
are saved beside a checkpoint (readout.pt) only so a stopped run resumes where it was.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError

FILE = "readout.pt"
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class Readout(nn.Module):
    def __init__(self, vocab: dict[str, list[str]], width: int):
        super().__init__()
        for name in vocab:
            if not _NAME.fullmatch(name):
                raise TrainingError(f"image label {name!r}: a label name is lower-case letters, digits and _")
        self.vocab, self.width = vocab, width
        self.index = {name: {v: i for i, v in enumerate(values)} for name, values in vocab.items()}
        self.heads = nn.ModuleDict({name: nn.Linear(width, len(values)) for name, values in vocab.items()})

    @classmethod
    def for_labels(cls, labels: list[dict[str, str]], width: int) -> "Readout":
        """Heads for every attribute the data labels, each over the values it takes (sorted: the same data
        always gives the same heads)."""
        values: dict[str, set[str]] = {}
        for item in labels:
            for name, value in item.items():
                values.setdefault(name, set()).add(value)
        if not values:
            raise TrainingError("loss.w_readout is set but no image in the training data has 'labels'")
        return cls({name: sorted(v) for name, v in sorted(values.items())}, width)

    def loss(self, cond: torch.Tensor, labels: list[dict[str, str]]) -> torch.Tensor:
        """Mean over attributes of the heads' cross-entropy on the images labelled with it; cond (N, Q, C)."""
        flat = cond.reshape(cond.shape[0], -1).float()
        losses = []
        for name, head in self.heads.items():
            rows = [i for i, item in enumerate(labels) if item.get(name) in self.index[name]]
            if rows:
                targets = torch.tensor([self.index[name][labels[i][name]] for i in rows], device=flat.device)
                losses.append(F.cross_entropy(head(flat[rows]), targets))
        return torch.stack(losses).mean() if losses else flat.new_zeros(())

    def save(self, directory: Path) -> None:
        torch.save({"vocab": self.vocab, "width": self.width, "state": self.state_dict()}, directory / FILE)

    def load_from(self, directory: Path) -> bool:
        """Take the heads saved in `directory` when there are some for the same labels; says whether it did."""
        path = directory / FILE
        if not path.exists():
            return False
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved["vocab"] != self.vocab or saved["width"] != self.width:
            raise TrainingError(f"{path}: its heads read other labels than this run's data has; "
                                f"start over (--no-resume) or keep the data")
        self.load_state_dict(saved["state"])
        return True
