"""What a graph takes and gives (GraphIO), and the timestep as every UNet graph takes it: shared by the whole
graphs (graphs.py) and the graphs of the UNet's cut (split_graphs.py), which import nothing of each other's."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict  # name -> {axis: symbolic name}; equal names tell the runtime the sizes are equal


def timestep_input(timestep, batch: int, device: torch.device) -> torch.Tensor:
    """The timestep as the UNet graph takes it: one per sample, shape (batch,), fp32 in every precision. One value
    (the scheduler's 0-d timestep: the whole batch at one step) is repeated; (batch,) values are taken as they are,
    so samples at different steps can share a batch."""
    timestep = torch.as_tensor(timestep)
    if timestep.numel() == 1:
        timestep = timestep.reshape(1).expand(batch)
    elif tuple(timestep.shape) != (batch,):
        raise ValueError(f"timestep must hold one value or one per sample ({batch},), got shape "
                         f"{tuple(timestep.shape)}")
    return timestep.to(device=device, dtype=torch.float32).contiguous()
