"""Prompt templates: wrap a topic into the instruction the model sees (`--template NAME`, or per line), and the
chat format around the instruction (`chat`: the released chat models' vicuna_v1.1, or none).

A template is a text file `templates/prompts/NAME.txt` with `{topic}` where the topic goes.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from ..errors import ParamsError, quoted

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates" / "prompts"  # dreamgen/templates: installed there
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
CHAT_TEMPLATES = {
    "vicuna": VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:",
    "none": "{instruction}",
}
NO_TEMPLATE = "none"  # the topic is the instruction, unchanged
# Where an input picture goes in a prompt; the generator puts the picture's image block there.
IMAGE_PLACEHOLDER = "<image>"
TOPIC = "{topic}"
# Names are file stems; a strict pattern keeps "../x" from ever reaching the file system.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # used with fullmatch; 64 characters keep it a valid file name


def available() -> list[str]:
    """Every name `render` accepts, "none" first."""
    return [NO_TEMPLATE] + sorted(p.stem for p in TEMPLATES_DIR.glob("*.txt") if _NAME.fullmatch(p.stem))


def check_template(name: str) -> str:
    """Return `name` if it is a known template; otherwise raise ParamsError listing the known ones."""
    if name == NO_TEMPLATE:
        return name
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not (TEMPLATES_DIR / f"{name}.txt").is_file():
        reason = f"unknown prompt template {quoted(name) if isinstance(name, str) else repr(name)}; " \
                 f"available: {', '.join(available())}"
        raise ParamsError(reason, name="template", rule=reason)
    return name


def render(name: str, topic: str) -> str:
    """The instruction for `topic` under template `name` ("none" returns the topic unchanged)."""
    if check_template(name) == NO_TEMPLATE:
        return topic
    # str.replace, not str.format: braces in a topic or a template are plain text.
    return _load(name).replace(TOPIC, topic)


@lru_cache(maxsize=None)
def _load(name: str) -> str:
    text = (TEMPLATES_DIR / f"{name}.txt").read_text(encoding="utf-8").strip()
    if TOPIC not in text:
        raise ParamsError(f"prompt template {name!r} ({TEMPLATES_DIR / name}.txt) has no {TOPIC} placeholder")
    return text


def chat_text(chat: str, instruction: str) -> str:
    """The text the model reads for `instruction` in chat format `chat`."""
    return CHAT_TEMPLATES[chat].format(instruction=instruction)
