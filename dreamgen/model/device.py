"""The device a model runs on, checked by its name alone: no torch, so a typo is said before torch loads."""
from __future__ import annotations

import re

from ..errors import CheckpointError

DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device(name: str) -> None:
    """cpu, cuda or cuda:N (whether CUDA is there is torch's to say, once it loads)."""
    if not DEVICE.fullmatch(name):
        raise CheckpointError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
