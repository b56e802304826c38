"""Prompt files (.txt, .jsonl, .csv, .yaml): read one item at a time, check everything, yield PromptSpecs.

A file is validated whole before anything runs (`validate_prompt_file`), then read again to run
(`iter_prompt_file`); both stream, so a 100,000-line file is never held in memory, only its set of ids.
A problem confined to one prompt (a bad value, a line that is not JSON, a repeated id) does not stop the
check: the user gets every such problem of the file at once (up to MAX_REPORTED_PROBLEMS), not one per try.

Where a value comes from, weakest first: GenerationParams defaults, the job's defaults (CLI flags),
a YAML file's `defaults:`, the item itself. A document given no seed anywhere gets one derived from its id.
Given the model's context (`ModelContext`), a prompt too long for it is a problem of its line.
`template` is a parameter like the others: the generator applies the prompt template, so `PromptSpec.prompt`
is the topic as the user wrote it.
The file formats themselves are read in `readers.py`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .. import pictures
from ..errors import (DreamgenError, InputImageError, KeyNotFound, ParamsError, PromptFileError, PromptFileProblems,
                      preview, quoted)
from ..ids import JOB_FILES, derived_seed, document_id, safe_document_id
from ..params import DREAMGEN_DEFAULTS, PARAM_NAMES, REFERENCE_DEFAULTS, GenerationParams
from .context import ModelContext, context_problem
from .readers import DEFAULT_FIELDS, EXTENSIONS, FIELDS, FileDefaults, reader_for, type_problem, unknown_field_reason
from .templates import check_template

S3Header = Callable[[str, str, int], bytes]  # (bucket, key, n) -> the first n bytes of an object

VAE_SCALE_FACTOR = 8  # images are decoded from latents 8x smaller, so sizes must divide by 8

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

MAX_REPORTED_PROBLEMS = 20  # enough to see a pattern; a file wrong on every line is not listed whole

__all__ = ["EXTENSIONS", "FIELDS", "MAX_REPORTED_PROBLEMS", "PromptSpec", "VAE_SCALE_FACTOR", "check_job_defaults",
           "iter_prompt_file", "validate_prompt_file"]


@dataclass
class PromptSpec:
    """One document to generate, fully checked."""

    line: int  # 1-based line (txt, jsonl, csv) or line where the YAML item starts
    id: str  # safe as a path part
    custom_id: str | None  # the id as the user wrote it, if they did
    prompt: str  # as the user wrote it (stripped); params.template says how it becomes the instruction
    title: str | None
    params: GenerationParams
    images: list[str] = field(default_factory=list)  # absolute local paths or s3:// URLs
    request_url: str | None = None  # an OpenAI Batch API line's endpoint (its results answer in that shape)


def validate_prompt_file(path, defaults: Mapping[str, Any] | None, model_id: str,
                         context: ModelContext | None = None, s3_header: S3Header | None = None,
                         time_limit_s: float | None = None) -> int:
    """Check the whole file in one streaming pass; return how many prompts it holds. With `context` (the
    model's), a prompt that does not fit it is a problem, with its token count. With `s3_header`, pictures on S3
    are checked from their header as local ones are (bounded size), each once. With `time_limit_s` (a chunk's,
    for workers), a document whose pictures cannot be painted within it even at the fastest is a problem.

    One problem is raised as PromptFileError (file, line, field); several as PromptFileProblems, listing up to
    MAX_REPORTED_PROBLEMS of them. A problem that stops the reading (bytes that are not UTF-8, broken YAML, a bad
    CSV header) ends the list. Bad `defaults` raise ParamsError.
    """
    problems: list[PromptFileError] = []
    count, more = 0, False

    def note(problem: PromptFileError) -> None:
        nonlocal more
        if len(problems) < MAX_REPORTED_PROBLEMS:
            problems.append(problem)
        else:
            more = True

    try:
        for outcome in _outcomes(Path(path), defaults, model_id, context, s3_header, checking=True,
                                 time_limit_s=time_limit_s):
            if isinstance(outcome, PromptFileError):
                note(outcome)
                if more:
                    break
            else:
                count += 1
    except PromptFileError as e:  # the file cannot be read on
        note(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise PromptFileProblems(problems, more=more)
    if count == 0:
        raise PromptFileError(path, None, "no prompts in the file")
    return count


def iter_prompt_file(path, defaults: Mapping[str, Any] | None, model_id: str) -> Iterator[PromptSpec]:
    """Yield one PromptSpec per prompt, streaming. Call `validate_prompt_file` first so a bad file
    is rejected before anything is written; here the first problem is raised."""
    count = 0
    for outcome in _outcomes(Path(path), defaults, model_id):
        if isinstance(outcome, PromptFileError):
            raise outcome
        yield outcome
        count += 1
    if count == 0:
        raise PromptFileError(path, None, "no prompts in the file")


def _outcomes(path: Path, defaults: Mapping[str, Any] | None, model_id: str,
              context: ModelContext | None = None,
              s3_header: S3Header | None = None, checking: bool = False,
              time_limit_s: float | None = None) -> Iterator[PromptSpec | PromptFileError]:
    """Each prompt of the file as a PromptSpec, or as the PromptFileError that rejects it. Problems that are not
    one prompt's (the file, its header, its defaults) are raised. `checking`: the validation pass, which reads
    pictures' headers; the run pass leaves a picture changed since to fail its own document when decoded."""
    read_items = reader_for(path)
    builder = _SpecBuilder(path, check_job_defaults(defaults or {}), model_id, context, s3_header, checking,
                           time_limit_s)
    for line, item in read_items(path):
        if isinstance(item, FileDefaults):
            builder.set_file_defaults(line, item.values)
        elif isinstance(item, PromptFileError):  # the reader could not make an item of this line
            yield item
        else:
            try:
                outcome = builder.build(line, item)
            except PromptFileError as e:
                outcome = e
            yield outcome


# ---------------------------------------------------------------------------------------------
# Checks: one item dict -> PromptSpec, or the first problem as PromptFileError.


def check_job_defaults(defaults: Mapping[str, Any]) -> dict:
    """Job-wide values from CLI flags; None means the flag was not given. Problems are ParamsError."""
    values = {name: value for name, value in defaults.items() if value is not None}
    for name, value in values.items():
        if name not in DEFAULT_FIELDS:
            raise ParamsError(f"unknown default parameter {name!r}; known: {', '.join(DEFAULT_FIELDS)}")
        problem = type_problem(name, value)
        if problem:
            raise ParamsError(f"{name}={value!r}: {problem}", name=name, rule=problem)
    if "template" in values:
        check_template(values["template"])
    params = GenerationParams(**values)
    size_problem = _image_size_problem(params)
    if size_problem:
        raise ParamsError(f"image_size={params.image_size!r}: {size_problem}", name="image_size",
                          rule=f"{size_problem}, got {params.image_size}")
    return values


class _SpecBuilder:
    def __init__(self, path: Path, job_defaults: dict, model_id: str, context: ModelContext | None = None,
                 s3_header: S3Header | None = None, checking: bool = True, time_limit_s: float | None = None):
        self.path, self.model_id, self.context, self.time_limit_s = path, model_id, context, time_limit_s
        self.defaults = dict(job_defaults)
        self.images = _ImageResolver(path, s3_header, checking)
        self.seen = _SeenIds()

    def fail(self, line, reason, field=None):
        raise PromptFileError(self.path, line, reason, field=field)

    def set_file_defaults(self, line: int, values: dict) -> None:
        for name, value in values.items():
            if name not in DEFAULT_FIELDS:
                self.fail(line, unknown_field_reason(name, "default", DEFAULT_FIELDS), field=str(name))
        merged = {**self.defaults, **self._typed(line, values)}
        self._params(line, merged)  # out-of-range defaults are reported here, on the defaults' line
        self.defaults = merged

    def build(self, line: int, item: dict) -> PromptSpec:
        for name in item:
            if name not in FIELDS:
                self.fail(line, unknown_field_reason(name, "field"), field=str(name))
        values = {**self.defaults, **self._typed(line, item)}

        if "id" in values and "custom_id" in values:
            self.fail(line, "give either 'id' or 'custom_id', not both", field="custom_id")
        id_field = "id" if "id" in values else "custom_id" if "custom_id" in values else None
        custom_id = values.get(id_field) if id_field else None
        if custom_id is not None and not custom_id.strip():
            self.fail(line, "is empty", field=id_field)
        if custom_id is not None and custom_id.strip().lower() in JOB_FILES:  # issue 33: its folder would be the file
            self.fail(line, f"{quoted(custom_id)} is the name of a file of the job folder "
                            f"({', '.join(JOB_FILES)}); choose another id", field=id_field)

        if "prompt" not in values:
            self.fail(line, "is missing", field="prompt")
        prompt = values["prompt"].strip()
        if not prompt:
            self.fail(line, "is empty", field="prompt")
        title = values.get("title")
        params = self._params(line, values)
        located = [self.images.resolve(line, ref) for ref in values.get("images", [])]

        if custom_id is not None:
            doc_id = safe_document_id(custom_id)
        else:
            doc_id = document_id(self.model_id, prompt, params, [identity for _, identity in located], title)
        self._check_unique(line, doc_id, custom_id, id_field)
        if "seed" not in values:  # after the id, which keeps hashing the default seed: ids of earlier jobs hold
            params = params.replace(seed=derived_seed(doc_id))
        if self.context is not None:
            problem = context_problem(self.context, prompt, params, len(located))
            if problem:
                self.fail(line, problem, field="prompt")
        return PromptSpec(line=line, id=doc_id, custom_id=custom_id, prompt=prompt, title=title, params=params,
                          images=[location for location, _ in located], request_url=getattr(item, "url", None))

    def _typed(self, line: int, values: dict) -> dict:
        """Drop nulls (= not given) and check each value's type."""
        typed = {}
        for name, value in values.items():
            if value is None:
                continue
            problem = type_problem(name, value)
            if problem:
                self.fail(line, problem, field=name)
            typed[name] = value
        return typed

    def _params(self, line: int, values: dict) -> GenerationParams:
        try:
            params = GenerationParams(**{k: v for k, v in values.items() if k in PARAM_NAMES})
            check_template(params.template)
        except ParamsError as e:
            self.fail(line, e.rule or str(e), field=e.name)
        size_problem = _image_size_problem(params)
        if size_problem:
            self.fail(line, f"{size_problem}, got {params.image_size}", field="image_size")
        if self.time_limit_s is not None:
            problem = worst_case_problem(params, self.time_limit_s)
            if problem:
                self.fail(line, problem[1], field=problem[0])
        return params

    def _check_unique(self, line: int, doc_id: str, custom_id: str | None, id_field: str | None) -> None:
        earlier = self.seen.add(doc_id, line)
        if earlier is None:
            return
        first_line, first_id = earlier
        if custom_id is None:
            self.fail(line, f"same prompt and parameters as line {first_line} (document id {doc_id}); "
                            "give one of them an id or a different seed")
        if first_id != doc_id:
            self.fail(line, f"id {quoted(custom_id)} and the id {quoted(first_id)} on line {first_line} differ "
                            "only in case; they would share a folder on case-insensitive file systems", field=id_field)
        shown = quoted(custom_id) + (f" (document id {doc_id!r})" if doc_id != custom_id else "")
        self.fail(line, f"duplicate id {shown}: line {first_line} has the same id", field=id_field)


class _SeenIds:
    """Ids seen so far, compared ignoring case. Stores a 64-bit hash and a line per id, not the id
    itself, so 100,000 ids take a few MB."""

    def __init__(self):
        self._lines: dict[int, int] = {}
        self._cased: dict[int, str] = {}  # the few ids with capitals, to name them exactly

    def add(self, doc_id: str, line: int) -> tuple[int, str] | None:
        """Record `doc_id`; if an id equal ignoring case was seen, return (its line, its id) instead."""
        folded = doc_id.lower()  # safe ids are ASCII, where lower() is case folding
        key = hash(folded)
        if key in self._lines:
            return self._lines[key], self._cased.get(key, folded)
        self._lines[key] = line
        if folded != doc_id:
            self._cased[key] = doc_id
        return None


class _ImageResolver:
    """Input pictures: local paths are resolved against the prompt file's folder, must exist and be images no
    larger than MAX_INPUT_PIXELS (read from their header), and are identified by their content (so a moved folder
    keeps its ids). s3:// URLs are kept as they are; with `s3_header` (bucket, key, n) -> the object's first n
    bytes, their size is checked too, from the header alone."""

    def __init__(self, prompt_file: Path, s3_header: S3Header | None = None, checking: bool = True):
        self.prompt_file = prompt_file
        self.base = prompt_file.resolve().parent
        self.s3_header, self.checking = s3_header, checking
        self._s3_checked: dict[str, str | None] = {}  # URL -> its problem; many lines often share a picture

    def resolve(self, line: int, ref: str) -> tuple[str, str]:
        """(where the picture is, what identifies it in the document id)."""
        if not ref.strip():
            raise PromptFileError(self.prompt_file, line, "has an empty entry", field="images")
        if ref.startswith("s3://"):
            bucket, _, key = ref[len("s3://"):].partition("/")
            if not bucket or not key:
                raise PromptFileError(self.prompt_file, line, f"{preview(ref)} needs a bucket and a key: "
                                                              "s3://bucket/path/to/picture.png", field="images")
            problem = self._s3_problem(ref, bucket, key)
            if problem:
                raise PromptFileError(self.prompt_file, line, problem, field="images")
            return ref, ref
        if _URL_SCHEME.match(ref):
            raise PromptFileError(self.prompt_file, line, f"unsupported URL {preview(ref)}: use a local path or "
                                                          "an s3:// URL", field="images")
        try:
            location = (self.base / ref).resolve()
            found = location.is_file()
            stat = location.stat() if found else None
        except (OSError, ValueError) as e:  # a name too long for the file system, a loop of links
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise PromptFileError(self.prompt_file, line, f"input image {preview(ref)} cannot be used: {reason}",
                                  field="images") from None
        if not found:
            raise PromptFileError(self.prompt_file, line, f"input image not found: {preview(str(location), 200)}",
                                  field="images")
        try:
            if self.checking:
                _checked_header(str(location), stat.st_mtime_ns, stat.st_size)
            identity = _image_identity(str(location), stat.st_mtime_ns, stat.st_size)
        except InputImageError as e:
            raise PromptFileError(self.prompt_file, line, str(e), field="images") from None
        return str(location), identity

    def _s3_problem(self, ref: str, bucket: str, key: str) -> str | None:
        if self.s3_header is None:
            return None
        if ref not in self._s3_checked:
            try:
                pictures.s3_header_size(lambda n: self.s3_header(bucket, key, n), ref)
                self._s3_checked[ref] = None
            except InputImageError as e:
                self._s3_checked[ref] = str(e)
            except KeyNotFound:
                self._s3_checked[ref] = str(InputImageError(ref, "not found"))
            except DreamgenError as e:  # the storage's own message names the bucket and the endpoint
                self._s3_checked[ref] = str(InputImageError(ref, f"cannot be read: {e}"))
        return self._s3_checked[ref]


@lru_cache(maxsize=4096)  # many lines often share a picture; keyed on mtime so an edit is seen
def _checked_header(location: str, mtime_ns: int, size: int) -> None:
    """InputImageError unless the header says the file is an image of a bounded size."""
    pictures.header_size(location, location)  # reads the header only


@lru_cache(maxsize=4096)
def _image_identity(location: str, mtime_ns: int, size: int) -> str:
    """The picture's content hash."""
    digest = hashlib.sha256()
    try:
        with open(location, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise InputImageError(location, f"cannot be read: {e.strerror}") from None
    return f"sha256:{digest.hexdigest()}"


# The least a denoising step of a 512x512 picture takes: Stable Diffusion 1.5's UNet in fp16 on the fastest GPUs
# runs about 50 steps a second with guidance. A step costs at least in proportion to the pixels (attention more).
FASTEST_STEP_S_512 = 0.02
_DEFAULT_SIDE = 512  # image_size unset: the model's, 512 for the released checkpoints
# steps unset: the model's, not known when a file is checked; the fewest of the defaults dreamgen knows, so that no
# document that could finish is refused
_FEWEST_STEPS = min(REFERENCE_DEFAULTS.steps, DREAMGEN_DEFAULTS.steps)


def worst_case_problem(params: GenerationParams, time_limit_s: float) -> tuple[str, str] | None:
    """(field, reason) when a document's pictures at their most (max_images x steps x image_size) cannot be
    painted within `time_limit_s` even at the fastest: it would only ever be killed by the time limit, holding a
    worker's slots meanwhile (issue 33). The field named is the one furthest above its default."""
    side = params.image_size or _DEFAULT_SIDE
    steps = params.steps if params.steps is not None else _FEWEST_STEPS
    least_s = params.max_images * steps * FASTEST_STEP_S_512 * (side / _DEFAULT_SIDE) ** 2
    if least_s <= time_limit_s:
        return None
    defaults = GenerationParams()
    excess = {"max_images": params.max_images / defaults.max_images, "steps": steps / _FEWEST_STEPS,
              "image_size": (side / _DEFAULT_SIDE) ** 2}
    field_name = max(excess, key=excess.get)
    return field_name, (f"max_images {params.max_images} x steps {steps} x image_size {side} px take at least "
                        f"{least_s:,.0f} s to paint (a 512 px step in {FASTEST_STEP_S_512 * 1000:.0f} ms at the "
                        f"fastest), over a chunk's time limit of {time_limit_s:,.0f} s; lower {field_name}")


def _image_size_problem(params: GenerationParams) -> str | None:
    if params.image_size is not None and params.image_size % VAE_SCALE_FACTOR:
        return f"must be a multiple of {VAE_SCALE_FACTOR} (the VAE's scale factor)"
    return None
