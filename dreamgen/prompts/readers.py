"""Prompt file formats: each reader yields (line, item) with values typed as JSON would type them.
A JSONL line, CSV row or YAML list item that makes no item is yielded as (line, PromptFileError), so the check
goes on to the next one; problems of the whole file (its header, its YAML structure, bytes that are not UTF-8)
are raised.

What a prompt file may contain (its fields and their types) is defined here too; `prompts.py` checks
the values. Every reader streams: one line (or one YAML item) at a time, within the bounds of `limits.py`, so a
hostile file gets a one-line error like any other mistake, never a traceback or a stall.
"""
from __future__ import annotations

import csv
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from ..errors import PromptFileError, preview
from ..params import PARAM_NAMES
from .bounded_yaml import BoundedLoader, YAMLLimit, check_node
from .limits import MAX_LINE_BYTES, LongNumber, bounded_int, text_problem
from .openai_batch import batch_request_item, is_batch_request

DEFAULT_FIELDS = PARAM_NAMES  # what job defaults and a YAML `defaults:` may set
ID_FIELDS = ("id", "custom_id")
FIELDS = ID_FIELDS + ("prompt", "title", "images") + PARAM_NAMES

INT_FIELDS = {"seed", "steps", "max_images", "max_new_tokens", "image_size", "cache_interval"}
NUMBER_FIELDS = {"guidance", "temperature", "top_p", "cache_until", "guidance_until"}
STRING_FIELDS = {"id", "custom_id", "prompt", "title", "template", "chat", "negative_prompt", "scheduler"}
LIST_FIELDS = {"images"}

EXTENSIONS = (".txt", ".jsonl", ".csv", ".yaml", ".yml")


@dataclass
class FileDefaults:
    """A YAML file's `defaults:` mapping, yielded before its prompts."""

    values: dict


def reader_for(path: Path):
    if not path.exists():
        raise PromptFileError(path, None, "no such file")
    if path.is_dir():
        raise PromptFileError(path, None, "is a directory, not a prompt file")
    suffix = path.suffix.lower()
    readers = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv, ".yaml": _read_yaml, ".yml": _read_yaml}
    if suffix not in readers:
        hint = " (JSON Lines files end in .jsonl)" if suffix == ".json" else ""
        raise PromptFileError(path, None, f"unsupported extension {suffix or '(none)'!r}; use one of "
                                          f"{', '.join(EXTENSIONS)}{hint}")
    return readers[suffix]


def decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending), decoding each line on its own to name a bad one. A line is read
    MAX_LINE_BYTES at most, so a file of one endless line never fills the memory."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise PromptFileError(path, number, f"line is longer than {MAX_LINE_BYTES // 1024} KiB; no prompt "
                                                    "is that long (is it a prompt file?)")
            if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise PromptFileError(path, number, "is UTF-16 (it starts with a UTF-16 byte-order mark); "
                                                    "save the file as UTF-8")
            if b"\x00" in raw:  # UTF-16 without a byte-order mark decodes as UTF-8 full of NULs
                raise PromptFileError(path, number, f"holds a NUL byte (column {raw.index(0) + 1}): a UTF-16 or "
                                                    "binary file? Save the file as UTF-8")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PromptFileError(path, number, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                                    f"{e.start + 1}); save the file as UTF-8") from None
            if number == 1 and text.startswith("\ufeff"):  # a byte-order mark some editors write
                text = text[1:]
            yield number, text


def _read_txt(path: Path):
    for number, text in decoded_lines(path):
        text = text.strip()
        if text and not text.startswith("#"):
            yield number, {"prompt": text}


def _read_jsonl(path: Path):
    for number, text in decoded_lines(path):
        if text.strip():
            item = _jsonl_item(path, number, text)
            if isinstance(item, dict) and is_batch_request(item):  # issue 15: an OpenAI Batch API request line
                item = batch_request_item(path, number, item)
            yield number, item


def _jsonl_item(path: Path, number: int, text: str) -> dict | PromptFileError:
    """The line's object, or the problem that makes it none (yielded, so the lines after it are still read)."""
    try:
        # Without its line ending, so an unfinished line is reported where it ends, not at "line 2, column 1".
        item = _JSON.decode(text.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        return PromptFileError(path, number, f"invalid JSON: {e.msg} (column {e.colno})")
    except RecursionError:  # json's scanner recurses once per [ or {
        return PromptFileError(path, number, "invalid JSON: nested too deeply (a prompt line nests 3 levels)")
    except _RepeatedKey as e:
        return PromptFileError(path, number, "appears twice in the same object", field=e.key)
    if not isinstance(item, dict):
        return PromptFileError(path, number, 'each line must be a JSON object like {"prompt": "..."}, '
                                             f"got {_kind(item)}")
    return item


class _RepeatedKey(Exception):
    def __init__(self, key):
        self.key = key


def _object_without_repeated_keys(pairs):
    item = dict(pairs)
    if len(item) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return item


# One decoder for every line (json.loads with options builds a new one per call).
_JSON = json.JSONDecoder(object_pairs_hook=_object_without_repeated_keys, parse_int=bounded_int)


def _read_csv(path: Path):
    reader = csv.reader(text for _, text in decoded_lines(path))
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [name.strip() for name in header]
        _check_csv_header(path, columns)
        while True:
            start = reader.line_num + 1  # the line where this record begins (a quoted cell may span lines)
            row = next(reader, None)
            if row is None:
                return
            if not any(cell.strip() for cell in row):
                continue
            yield start, _csv_item(path, start, columns, row)
    except csv.Error as e:
        if reader.line_num <= start:
            raise PromptFileError(path, reader.line_num, f"invalid CSV: {e}") from None
        # a quoted cell runs on until the error: it is the record's first line a person must look at (issue 33)
        raise PromptFileError(path, start, f"invalid CSV: {e} (at line {reader.line_num}, in the record that "
                                           f"starts here: is a quote left open?)") from None


def _csv_item(path: Path, line: int, columns: list[str], row: list[str]) -> dict | PromptFileError:
    """The row as an item, or the problem that makes it none (yielded, so the rows after it are still read)."""
    if len(row) > len(columns):
        return PromptFileError(path, line, f"row has {len(row)} cells but the header has {len(columns)} "
                                           "columns (quote cells that contain commas)")
    try:
        return {name: _csv_value(path, line, name, cell) for name, cell in zip(columns, row)
                if cell.strip() or name == "prompt"}
    except PromptFileError as e:
        return e


def _check_csv_header(path: Path, columns: list[str]) -> None:
    seen = set()
    for number, name in enumerate(columns, 1):
        if not name:
            raise PromptFileError(path, 1, f"header column {number} has no name")
        if name in seen:
            raise PromptFileError(path, 1, "header names this column twice", field=name)
        if name not in FIELDS:
            raise PromptFileError(path, 1, unknown_field_reason(name, "column"), field=name)
        seen.add(name)
    if "prompt" not in seen:
        raise PromptFileError(path, 1, "header has no 'prompt' column")


def _csv_value(path: Path, line: int, name: str, cell: str):
    """A CSV cell is text; give it the type the same value would have in JSON."""
    text = cell.strip()
    if name in INT_FIELDS:
        if not re.fullmatch(r"[+-]?\d+", text):
            raise PromptFileError(path, line, f"must be an integer, got {_show(text)}", field=name)
        return bounded_int(text)
    if name in NUMBER_FIELDS:
        try:
            return float(text)
        except ValueError:
            raise PromptFileError(path, line, f"must be a number, got {_show(text)}", field=name) from None
    if name in LIST_FIELDS:
        return [part.strip() for part in re.split(r"[|;]", text) if part.strip()]
    return text


def _read_yaml(path: Path):
    """Items one at a time from the event stream, so a long list is never built whole."""
    try:
        with open(path, encoding="utf-8-sig") as stream:
            loader = BoundedLoader(stream)
            try:
                yield from _yaml_items(path, loader)
            finally:
                loader.dispose()
    except (UnicodeDecodeError, yaml.reader.ReaderError):  # bytes that are not UTF-8, NULs, control characters
        for _ in decoded_lines(path):  # raises with the line number of bad bytes, NULs and overlong lines
            pass
        raise PromptFileError(path, None, f"invalid YAML: {sys.exc_info()[1]}") from None
    except YAMLLimit as e:
        raise PromptFileError(path, e.line, e.reason) from None
    except RecursionError:  # a last guard: BoundedLoader bounds the nesting well before this
        raise PromptFileError(path, None, "invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise PromptFileError(path, mark.line + 1 if mark else None,
                              f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise PromptFileError(path, None, f"invalid YAML: {e}") from None


def _yaml_items(path: Path, loader: yaml.SafeLoader):
    loader.get_event()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        return
    loader.get_event()  # document start
    if loader.check_event(yaml.SequenceStartEvent):
        yield from _yaml_sequence(path, loader)
    elif loader.check_event(yaml.MappingStartEvent):
        yield from _yaml_mapping(path, loader)
    elif loader.check_event(yaml.ScalarEvent) and loader.peek_event().value == "":
        loader.get_event()  # a file of comments only: no prompts
    else:
        line = loader.peek_event().start_mark.line + 1
        raise PromptFileError(path, line, "a YAML prompt file is a list of prompts, or a mapping with "
                                          "'defaults:' and 'prompts:'")
    loader.get_event()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        line = loader.peek_event().start_mark.line + 1
        raise PromptFileError(path, line, "only one YAML document is allowed (remove the extra '---')")


def _yaml_mapping(path: Path, loader: yaml.SafeLoader):
    loader.get_event()  # mapping start
    seen = set()
    while not loader.check_event(yaml.MappingEndEvent):
        key_node = loader.compose_node(None, None)
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise PromptFileError(path, line, "top-level keys must be 'defaults' or 'prompts'")
        key = key_node.value
        if key in seen:
            raise PromptFileError(path, line, f"'{key}:' appears twice")
        seen.add(key)
        if key == "defaults":
            if "prompts" in seen:
                raise PromptFileError(path, line, "'defaults:' must come before 'prompts:'")
            values = _construct(path, loader, loader.compose_node(None, None))
            if not isinstance(values, dict):
                raise PromptFileError(path, line, f"'defaults:' must be a mapping, got {_kind(values)}")
            yield line, FileDefaults(values)
        elif key == "prompts":
            if not loader.check_event(yaml.SequenceStartEvent):
                raise PromptFileError(path, line, "'prompts:' must be a list")
            yield from _yaml_sequence(path, loader)
        else:
            raise PromptFileError(path, line, f"unknown top-level key {key!r}; use 'defaults:' and 'prompts:'")
    loader.get_event()  # mapping end


def _yaml_sequence(path: Path, loader: yaml.SafeLoader):
    loader.get_event()  # sequence start
    while not loader.check_event(yaml.SequenceEndEvent):
        node = loader.compose_node(None, None)
        line = node.start_mark.line + 1
        yield line, _yaml_item(path, loader, node, line)
    loader.get_event()  # sequence end


def _yaml_item(path: Path, loader: yaml.SafeLoader, node, line: int) -> dict | PromptFileError:
    """The item as a mapping, or the problem that makes it none (yielded, so the items after it are still read)."""
    try:
        value = _construct(path, loader, node)
    except PromptFileError as e:
        return e
    if isinstance(value, str):
        return {"prompt": value}
    if not isinstance(value, dict):
        return PromptFileError(path, line, f"each item must be a prompt string or a mapping, got {_kind(value)}")
    return value


def _construct(path: Path, loader: yaml.SafeLoader, node):
    try:
        check_node(node)  # before building it: aliases may make a small text a billion values
    except YAMLLimit as e:
        raise PromptFileError(path, e.line, e.reason) from None
    if isinstance(node, yaml.MappingNode):  # PyYAML would let a repeated key silently win
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in seen:
                raise PromptFileError(path, key_node.start_mark.line + 1, "appears twice in the same item",
                                      field=key_node.value)
            seen.add(getattr(key_node, "value", None) if isinstance(key_node, yaml.ScalarNode) else id(key_node))
    value = loader.construct_object(node, deep=True)
    loader.constructed_objects.clear()  # the loader would otherwise keep every item it built
    return value


def type_problem(name: str, value) -> str | None:
    """Why `value` has the wrong type for field `name`, or None if it is fine."""
    if isinstance(value, LongNumber) and name in INT_FIELDS | NUMBER_FIELDS:
        return f"must be {'an integer' if name in INT_FIELDS else 'a number'} in range, got {value}"
    if name in INT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {_show(value)}"
    if name in NUMBER_FIELDS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a number, got {_show(value)}"
    if name in STRING_FIELDS:
        if isinstance(value, str):
            return text_problem(value)
        hint = " (put it in quotes)" if isinstance(value, (int, float, LongNumber)) else ""
        return f"must be a string, got {_show(value)}{hint}"
    if name in LIST_FIELDS:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok:
            return f"must be a list of local paths or s3:// URLs, got {_show(value)}"
        return next((f"entry {i + 1} {problem}" for i, v in enumerate(value) if (problem := text_problem(v))), None)
    return None


def unknown_field_reason(name, what: str, known=FIELDS) -> str:
    close = difflib.get_close_matches(str(name)[:100], known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown {what}; {hint}known: {', '.join(known)}"


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    names = {int: "a number", float: "a number", LongNumber: "a number", str: "a string", list: "a list",
             dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


def _show(value) -> str:
    """A short, unambiguous rendering of a bad value for a message (bounded, however big the value)."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, LongNumber):
        return str(value)
    text = preview(value)
    return text if isinstance(value, str) else f"{text} ({_kind(value)})"
