"""The generator's configuration: one object built once (settings.generator_config) and passed to the Generator and
the worker's shared pool, so every knob of the generator has one name and one place it is read."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads the choices here before torch is imported
    import torch

# Documents in flight by default, per device type. CPU: measured with bench/continuous.py, 48 text documents at
# 1 thread: the shapes model does 5.7x one-at-a-time at 16 slots, 7.7x at 32, 7.0x at 64; the small random one
# 5.0x at 16, 6.0x at 32. GPU: scripts/gpu_run.sh's engine section measures it.
DEFAULT_SLOTS = {"cpu": 32, "cuda": 64}
BATCHING = ("continuous", "lockstep")
PAINTING = ("overlap", "stepwise", "gather")  # painter_thread.py, painting.py
PREFILL_CHUNK = 64  # tokens of a long feed per step: a newcomer delays the others' next token by about this many
STEP_TOKENS = 256  # tokens of long feeds per step at most, besides one per decoding document


@dataclass(frozen=True)
class GeneratorConfig:
    slots: int | None = None  # documents in flight; None: DEFAULT_SLOTS of the device
    batching: str = "continuous"  # continuous: a freed slot takes the next document; lockstep: batch by batch
    kv_tokens: int | None = None  # a fixed KV pool; None: sized from memory (memory.py)
    kv_fraction: float | None = None  # CUDA: share of free memory for the pool; None: the setting's
    prefill_chunk: int = PREFILL_CHUNK
    step_tokens: int = STEP_TOKENS
    compile: bool | None = None  # torch.compile the decode buckets (and the UNet); None: on CUDA only
    graphs: bool | None = None  # replay decode buckets as CUDA graphs; None: on CUDA
    attention: str = "auto"  # auto | sdpa | flex (attention.py)
    # overlap: pictures painted in a thread of their own beside the LM (painter_thread.py); stepwise: a denoising
    # step each generator step, in the generator's thread; gather: all at once, later, while the text waits.
    # overlap by default: measured with bench/painting.py (docs/pictures.md#painting-beside-the-text)
    painting: str = "overlap"

    def __post_init__(self):
        if self.batching not in BATCHING:
            raise ValueError(f"batching={self.batching!r}: use one of {', '.join(BATCHING)}")
        if self.painting not in PAINTING:
            raise ValueError(f"painting={self.painting!r}: use one of {', '.join(PAINTING)}")
        for name in ("slots", "kv_tokens", "prefill_chunk", "step_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}: must be at least 1")

    def slots_for(self, device: torch.device) -> int:
        return self.slots or DEFAULT_SLOTS.get(device.type, 16)

    def compiles(self, device: torch.device) -> bool:
        return self.compile if self.compile is not None else device.type == "cuda"

    def captures(self, device: torch.device) -> bool:
        return device.type == "cuda" and (self.graphs if self.graphs is not None else True)


def generator_config(slots: int | None = None, batching: str = "continuous", compile: bool | None = None,
                  kv_fraction: float | None = None, painting: str | None = None) -> GeneratorConfig:
    """The generator's configuration from flags and settings: the one place the generator's settings are read
    (a flag given wins over its setting)."""
    from .. import settings

    if compile is None and settings.COMPILE.get() is not None:
        compile = settings.COMPILE.get() != "0"
    return GeneratorConfig(slots=slots, batching=batching, kv_tokens=settings.kv_tokens(), compile=compile,
                        kv_fraction=None if kv_fraction is None else settings.kv_memory_fraction(kv_fraction),
                        painting=painting or settings.PAINTING.get())
