"""`dreamgen eval`: does a model follow its prompt and draw what its text says? Measured on the shapes world's
held-out prompts, in three splits (dataset.SPLITS): unseen colour-kind pairs, unseen phrasings, and two shapes
each asked its own size and place (in unseen phrasings).

For every generated picture, the checker (shapes/checker.py) reads its colour, kind and background from the
pixels, and the text before the picture is read for the colour and kind it names last. Reported over all pictures
and documents:
    colour        pictures whose colour is the one the text names
    shape         pictures whose kind is the one the text names
    background    pictures whose background is the one the text names
    size, position  pictures whose size / position is the one the text names
    size asked, position asked, colour asked  pictures whose size / position / colour is the one the prompt asked
                  for that shape (the k-th picture: the k-th shape asked), where it asked
    size said, position said  the same read in the text before the picture (JSON report only)
    well formed   documents that end with </s>, have one picture per shape asked for, and name a shape
                  (colour + kind) before each picture
    follows prompt  documents whose named shapes are, in order, the ones the prompt asked for
Ablations show what drives the pictures: `queries` zeroes the learned dream queries, `condition` zeroes the
condition projector (the UNet then sees no text at all).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..document import Document, ImageBlock, TextBlock
from ..generation.generator import DocumentRequest, Generator
from ..model.dreamllm import DreamLLM
from ..params import GenerationParams
from .checker import Reading, last_mention, read_image
from .dataset import EvalPrompt
from .world import BACKGROUNDS, POSITIONS, SIZES

ABLATIONS = ("none", "queries", "condition")
_BACKGROUND = re.compile(r"\b(" + "|".join(BACKGROUNDS) + r") background\b")
_SIZE = re.compile(r"\b(" + "|".join(SIZES) + r")\b")
_POSITION = re.compile("(" + "|".join(POSITIONS) + ")")


def _last(pattern: re.Pattern, text: str) -> str | None:
    found = pattern.findall(text.lower())
    return found[-1] if found else None


@dataclass
class ImageScore:
    named_colour: str | None
    named_kind: str | None
    named_background: str | None
    reading: Reading
    named_size: str | None = None
    named_position: str | None = None
    asked_size: str | None = None  # what the prompt asked of this picture's shape, where it said
    asked_position: str | None = None
    asked_colour: str | None = None

    # Each check: the picture shows what was named (by the text, or by the prompt), where something was.
    colour_ok = property(lambda self: _shows(self.named_colour, self.reading.colour))
    kind_ok = property(lambda self: _shows(self.named_kind, self.reading.kind))
    background_ok = property(lambda self: _shows(self.named_background, self.reading.background))
    size_ok = property(lambda self: _shows(self.named_size, self.reading.size))
    position_ok = property(lambda self: _shows(self.named_position, self.reading.position))
    asked_size_ok = property(lambda self: _shows(self.asked_size, self.reading.size))
    asked_position_ok = property(lambda self: _shows(self.asked_position, self.reading.position))
    asked_colour_ok = property(lambda self: _shows(self.asked_colour, self.reading.colour))
    # the text carries what was asked: it names, for this shape, the size and place the prompt asked for it
    said_size_ok = property(lambda self: _shows(self.asked_size, self.named_size))
    said_position_ok = property(lambda self: _shows(self.asked_position, self.named_position))


def _shows(named: str | None, read: str | None) -> bool:
    return named is not None and read == named


@dataclass
class DocumentScore:
    prompt: str
    asked: list[tuple[str, str]]
    images: list[ImageScore]
    stop_reason: str
    problems: list[str] = field(default_factory=list)  # why it is not well formed
    follows_prompt: bool = False

    @property
    def well_formed(self) -> bool:
        return not self.problems


def score_document(doc: Document, asked: list[tuple[str, str]], positions: tuple = (), sizes: tuple = ()
                   ) -> DocumentScore:
    """Read every picture of `doc` and the text before it; judge the document's form against what was asked
    (the (colour, kind) pairs, and the places and sizes the prompt asked for, None where it did not)."""
    images, text, problems, named = [], "", [], []
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            text += " " + block.text
        elif isinstance(block, ImageBlock):
            colour, kind = last_mention(text)
            k = len(images)
            images.append(ImageScore(colour, kind, _last(_BACKGROUND, text), read_image(block.image),
                                     named_size=_last(_SIZE, text), named_position=_last(_POSITION, text),
                                     asked_size=sizes[k] if k < len(sizes) else None,
                                     asked_position=positions[k] if k < len(positions) else None,
                                     asked_colour=asked[k][0] if k < len(asked) else None))
            if colour is None or kind is None:
                problems.append(f"picture {len(images)} follows no named shape")
            named.append((colour, kind))
            text = ""
    if doc.stop_reason != "eos":
        problems.append(f"stopped by {doc.stop_reason}, not </s>")
    if len(images) != len(asked):
        problems.append(f"{len(images)} pictures for {len(asked)} shapes asked for")
    return DocumentScore(prompt=doc.prompt, asked=list(asked), images=images, stop_reason=doc.stop_reason,
                         problems=problems, follows_prompt=named == list(asked))


@dataclass
class EvalReport:
    model: str
    ablation: str
    params: dict
    documents: list[DocumentScore]
    split: str = "combos"

    def _rate(self, items: list[bool]) -> float:
        return sum(items) / len(items) if items else 0.0

    @property
    def images(self) -> list[ImageScore]:
        return [im for d in self.documents for im in d.images]

    def summary(self) -> dict:
        images = self.images
        return {
            "model": self.model, "split": self.split, "ablation": self.ablation, "documents": len(self.documents),
            "images": len(images),
            "colour": self._rate([im.colour_ok for im in images]),
            "shape": self._rate([im.kind_ok for im in images]),
            "background": self._rate([im.background_ok for im in images]),
            # where the text names one (the shapes articles always do)
            "size": self._rate([im.size_ok for im in images if im.named_size]),
            "position": self._rate([im.position_ok for im in images if im.named_position]),
            # where the prompt asks for one: the text must carry it to the picture (a model that always writes
            # and draws one place scores well above, not here)
            "size_asked": self._rate([im.asked_size_ok for im in images if im.asked_size]),
            "position_asked": self._rate([im.asked_position_ok for im in images if im.asked_position]),
            "colour_asked": self._rate([im.asked_colour_ok for im in images if im.asked_colour]),
            # the same in the text before each picture (a miss here is the LM's; above, the LM's or the UNet's)
            "size_said": self._rate([im.said_size_ok for im in images if im.asked_size]),
            "position_said": self._rate([im.said_position_ok for im in images if im.asked_position]),
            "well_formed": self._rate([d.well_formed for d in self.documents]),
            "follows_prompt": self._rate([d.follows_prompt for d in self.documents]),
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "params": self.params,
                "documents": [{**asdict(d), "well_formed": d.well_formed} for d in self.documents]}


def ablate(model: DreamLLM, ablation: str) -> DreamLLM:
    """Cut a path from text to pictures, in place: 'queries' zeroes the dream queries, 'condition' the projector."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation={ablation!r}: use one of {', '.join(ABLATIONS)}")
    if ablation == "queries":
        model.dream.dream_queries.data.zero_()
    elif ablation == "condition":
        model.head.projector.projector.weight.data.zero_()
    return model


def evaluate(model: DreamLLM, prompts: list[EvalPrompt], params: GenerationParams, batch_size: int = 8,
             ablation: str = "none", on_document=None, split: str = "combos") -> EvalReport:
    """Generate a document per prompt (in lockstep batches) and score it. `on_document(doc, score)` sees each."""
    params = params.resolved(model.info.defaults)  # the report names the settings used
    generator = Generator(model)
    scores = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        requests = [DocumentRequest(prompt=p.prompt, params=params, id=f"eval-{start + i:04d}")
                    for i, p in enumerate(chunk)]
        for doc, prompt in zip(generator.generate(requests), chunk):
            score = score_document(doc, list(prompt.combos), prompt.positions, prompt.sizes)
            scores.append(score)
            if on_document:
                on_document(doc, score)
    return EvalReport(model=model.info.name, ablation=ablation, params=params.to_dict(), documents=scores,
                      split=split)
