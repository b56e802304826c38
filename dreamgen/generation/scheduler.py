"""The scheduler: which documents enter the slot pool, which feed what at each step, and when pictures are painted.

It holds no tensors and runs nothing: each step it hands the generator a plan (runs of tokens to feed, documents
whose pictures to paint now) and hears back what happened (a document wants a picture, has a block to feed,
finished). Two policies:

    continuous  a slot that frees takes the next document of the job at the next step (in job order), while a KV
                budget allows its worst case
    lockstep    a batch of `slots` documents enters together and the next batch only when all have finished
                (the old fixed chunks, kept for comparison)

A long feed (a newcomer's prompt, a picture's image block) goes in chunks of `prefill_chunk` tokens, at most
`step_tokens` tokens a step besides the decoding documents' one each, so nobody's decoding stalls for long. A
document's chunks are cut from the start of its own feed, whatever else runs, so its numbers never depend on
its neighbours.

A document that asks for a picture waits while the others go on, until nobody else can go on or it has waited
PAINT_GATHER_STEPS steps; the waiting pictures are then painted together in one UNet batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

PAINT_GATHER_STEPS = 24
SCHEDULES = ("continuous", "lockstep")


class State(str, Enum):
    FEEDING = "feeding"  # has forced tokens to feed (prompt, dream block, image block) or one sampled token
    DREAMING = "dreaming"  # its dream block is fed: waits for its picture
    FINISHED = "finished"


@dataclass
class Seq:
    """One document in the pool, as the scheduler sees it: numbers only."""

    index: int  # arrival order in the job
    slot: int
    reserve: int  # positions reserved in the KV cache (its worst case)
    length: int = 0  # positions in the cache
    pending: int = 0  # tokens still to feed of the current feed
    fed: int = 0  # tokens of the current feed fed so far
    state: State = State.FEEDING
    waited: int = 0  # steps spent dreaming


@dataclass
class StepPlan:
    runs: list[tuple[Seq, int]] = field(default_factory=list)  # (document, tokens it feeds this step)
    paint: list[Seq] = field(default_factory=list)  # documents whose pictures are painted before the step


class Scheduler:
    def __init__(self, slots: int, kv_tokens: int, prefill_chunk: int = 64, step_tokens: int = 256,
                 schedule: str = "continuous"):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r}: use one of {', '.join(SCHEDULES)}")
        if slots < 1 or prefill_chunk < 1 or step_tokens < 1:
            raise ValueError("slots, prefill_chunk and step_tokens must be positive")
        self.slots, self.kv_tokens, self.schedule = slots, kv_tokens, schedule
        self.prefill_chunk, self.step_tokens = prefill_chunk, step_tokens
        self.live: list[Seq] = []  # in arrival order
        self.reserved = 0
        self._free_slots = list(range(slots))

    # ---------------------------------------------------------------------------------------- admission
    def can_admit(self, reserve: int) -> bool:
        if not self._free_slots:
            return False
        if self.schedule == "lockstep" and self.live and self._batch_closed:
            return False
        return self.reserved + reserve <= self.kv_tokens or not self.live  # one document always fits alone

    def admit(self, index: int, reserve: int, pending: int) -> Seq:
        seq = Seq(index=index, slot=self._free_slots.pop(0), reserve=reserve, pending=pending)
        self.live.append(seq)
        self.reserved += reserve
        self._batch_closed = False
        return seq

    def close_admission(self) -> None:
        """Lockstep: the batch is full (or the job has no more documents); nobody enters until it has finished."""
        self._batch_closed = True

    _batch_closed = False

    def finish(self, seq: Seq) -> None:
        seq.state = State.FINISHED
        self.live.remove(seq)
        self.reserved -= seq.reserve
        self._free_slots.append(seq.slot)
        self._free_slots.sort()  # the lowest free slot first: slot numbers stay small and stable

    # ---------------------------------------------------------------------------------------- a step
    def plan(self, more_waiting: bool) -> StepPlan:
        """The next step. `more_waiting`: documents of the job wait for a slot (so dreamers need not hurry)."""
        plan = StepPlan()
        dreaming = [s for s in self.live if s.state is State.DREAMING]
        feeders = [s for s in self.live if s.state is State.FEEDING]
        if dreaming:
            nobody_else = not feeders and not (more_waiting and self.can_admit_any())
            if nobody_else or max(s.waited for s in dreaming) >= PAINT_GATHER_STEPS:
                plan.paint = dreaming
        budget = self.step_tokens
        for seq in feeders:  # decoding documents first: one token each, never held back
            if seq.pending == 1 and seq.fed == 0:
                plan.runs.append((seq, 1))
        longer = [s for s in feeders if not (s.pending == 1 and s.fed == 0)]
        for seq in longer:  # then chunks of longer feeds, oldest first, while the step has room (one at least)
            n = min(self.prefill_chunk - seq.fed % self.prefill_chunk, seq.pending)
            if budget < n and any(count > 1 for _, count in plan.runs):
                break
            plan.runs.append((seq, n))
            budget -= n
        return plan

    def can_admit_any(self) -> bool:
        return bool(self._free_slots) and not (self.schedule == "lockstep" and self.live and self._batch_closed)

    def fed(self, seq: Seq, count: int) -> bool:
        """`count` tokens of `seq` went into the cache; True when its current feed is complete."""
        seq.length += count
        seq.pending -= count
        seq.fed += count
        return seq.pending == 0

    def feed(self, seq: Seq, tokens: int) -> None:
        """`seq` has a new feed of `tokens` tokens (a sampled token, a dream block, an image block)."""
        seq.state, seq.pending, seq.fed, seq.waited = State.FEEDING, tokens, 0, 0

    def dream(self, seq: Seq) -> None:
        seq.state, seq.waited = State.DREAMING, 0

    def waited(self) -> None:
        for seq in self.live:
            if seq.state is State.DREAMING:
                seq.waited += 1

    @property
    def busy(self) -> int:
        return len(self.live)
