"""The scheduler: which documents enter the slot pool, which feed what at each step, and when pictures are painted.

It holds no tensors and runs nothing. Its whole interface, once a step:

    offer(candidate)   the generator has prepared the next document of the job (its prompt's length and its
                       worst case in the KV pool); it waits here until admit() takes it
    admit()            the documents that enter now, each given a slot
    schedule()         the step's plan: runs of tokens to feed, documents whose pictures to paint now
    update(plan, ...)  what happened: every run fed its tokens; a document has a new feed (a sampled token, a dream
                       block, an image block), asks for a picture, or finished (vLLM's update_from_output)

Two batching policies:

    continuous  a slot that frees takes the next document of the job at the next step (in job order), while a KV
                budget allows its worst case
    lockstep    a batch of `slots` documents enters together and the next batch only when all have finished
                (the old fixed chunks, kept for comparison)

A long feed (a newcomer's prompt, a picture's image block) goes in chunks of `prefill_chunk` tokens, at most
`step_tokens` tokens a step besides the decoding documents' one each, so nobody's decoding stalls for long. A
document's chunks are cut from the start of its own feed, whatever else runs, so its numbers never depend on
its neighbours.

A document that asks for a picture waits (DREAMING) while the others go on. Painting "stepwise", its picture
takes a denoising step each generator step beside the others' decoding (the generator drives it) until it is fed
back; painting "overlap", the painter thread paints it and the generator feeds it back when it is done (the
scheduler hears of it as of any new feed); painting "gather", the scheduler has the waiting pictures painted together, start to end, once nobody else
can go on or one has waited PAINT_GATHER_STEPS steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .config import BATCHING, PAINTING

PAINT_GATHER_STEPS = 24
DREAM = "dream"  # update(): the document's dream block is fed; it waits for its picture
FINISH = "finish"  # update(): the document has ended; its slot and budget are free at once


class State(str, Enum):
    FEEDING = "feeding"  # has forced tokens to feed (prompt, dream block, image block) or one sampled token
    DREAMING = "dreaming"  # its dream block is fed: waits for its picture
    FINISHED = "finished"


@dataclass
class Candidate:
    """The next document of the job, prepared but not admitted."""

    index: int  # arrival order in the job
    reserve: int  # positions its worst case needs in the KV pool
    pending: int  # tokens of its prompt
    payload: object = None  # the generator's own (its request and prompt); the scheduler never reads it


@dataclass
class Seq:
    """One document in the pool, as the scheduler sees it: numbers only."""

    index: int
    slot: int
    reserve: int
    length: int = 0  # positions in the cache
    pending: int = 0  # tokens still to feed of the current feed
    fed: int = 0  # tokens of the current feed fed so far
    state: State = State.FEEDING
    waited: int = 0  # steps spent dreaming


@dataclass
class StepPlan:
    runs: list[tuple[Seq, int]] = field(default_factory=list)  # (document, tokens it feeds this step)
    paint: list[Seq] = field(default_factory=list)  # documents whose pictures are painted before the step

    @property
    def empty(self) -> bool:
        return not self.runs and not self.paint


class Scheduler:
    def __init__(self, slots: int, kv_tokens: int, prefill_chunk: int = 64, step_tokens: int = 256,
                 batching: str = "continuous", painting: str = "overlap"):
        if batching not in BATCHING or painting not in PAINTING:
            raise ValueError(f"batching={batching!r}, painting={painting!r}: use one of {', '.join(BATCHING)}; "
                             f"{', '.join(PAINTING)}")
        self.painting = painting
        if slots < 1 or prefill_chunk < 1 or step_tokens < 1:
            raise ValueError("slots, prefill_chunk and step_tokens must be positive")
        self.slots, self.kv_tokens, self.batching = slots, kv_tokens, batching
        self.prefill_chunk, self.step_tokens = prefill_chunk, step_tokens
        self.live: list[Seq] = []  # in arrival order
        self.waiting: Candidate | None = None
        self.reserved = 0
        self._free_slots = list(range(slots))
        self._batch_open = True  # lockstep: documents may join the batch being formed

    # ---------------------------------------------------------------------------------------- admission
    def wants_more(self) -> bool:
        """Whether the generator should prepare the next document now: a slot is free, the batch (lockstep) is
        open, and no prepared document is already waiting for budget."""
        return bool(self._free_slots) and self._batch_open and self.waiting is None

    def offer(self, candidate: Candidate) -> None:
        if self.waiting is not None:
            raise RuntimeError("a prepared document is already waiting")
        self.waiting = candidate

    def admit(self) -> Seq | None:
        """The waiting document, given a slot, if the slots and the KV budget allow it (one always fits alone)."""
        c = self.waiting
        if c is None or not self._free_slots or not self._batch_open:
            return None
        if self.live and self.reserved + c.reserve > self.kv_tokens:
            return None
        seq = Seq(index=c.index, slot=self._free_slots.pop(0), reserve=c.reserve, pending=c.pending)
        self.live.append(seq)
        self.reserved += c.reserve
        self.waiting = None
        return seq

    def _finish(self, seq: Seq) -> None:
        seq.state = State.FINISHED
        self.live.remove(seq)
        self.reserved -= seq.reserve
        self._free_slots.append(seq.slot)
        self._free_slots.sort()  # the lowest free slot first: slot numbers stay small and stable
        if self.batching == "lockstep" and not self.live:
            self._batch_open = True  # the batch has ended: the next one forms

    def drop(self, seq: Seq) -> None:
        """A document leaves before it has finished (its job was cancelled)."""
        self._finish(seq)

    # ---------------------------------------------------------------------------------------- a step
    def schedule(self, more_waiting: bool) -> StepPlan:
        """The next step. `more_waiting`: documents of the job wait for a slot (so dreamers need not hurry)."""
        if self.batching == "lockstep":
            self._batch_open = False  # the batch is what it is: nobody joins until it has ended
        plan = StepPlan()
        dreaming = [s for s in self.live if s.state is State.DREAMING]
        feeders = [s for s in self.live if s.state is State.FEEDING]
        if dreaming and self.painting == "gather":
            could_admit = more_waiting and bool(self._free_slots) and self._batch_open
            if (not feeders and not could_admit) or max(s.waited for s in dreaming) >= PAINT_GATHER_STEPS:
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

    def update(self, plan: StepPlan, after: dict[int, object]) -> list[Seq]:
        """Hear back once per step. Every run of the plan fed its tokens; `after` maps a document's index to what
        comes next for it: a new feed's length (int), DREAM or FINISH. Returns the documents that finished."""
        for seq, count in plan.runs:
            seq.length += count
            seq.pending -= count
            seq.fed += count
        finished = []
        for seq in list(self.live):
            outcome = after.get(seq.index)
            if outcome is None:
                if seq.state is State.DREAMING:
                    seq.waited += 1
            elif outcome == FINISH:
                self._finish(seq)
                finished.append(seq)
            elif outcome == DREAM:
                seq.state, seq.waited = State.DREAMING, 0
            else:
                seq.state, seq.pending, seq.fed, seq.waited = State.FEEDING, int(outcome), 0, 0
        return finished

    @property
    def busy(self) -> int:
        return len(self.live)
