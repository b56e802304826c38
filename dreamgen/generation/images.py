"""Pictures between Pillow and torch, converted the one way the loop, training and checks all use."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)  # (3, h, w) in [0, 1]


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.detach().float().cpu().permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(array)
