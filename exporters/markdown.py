"""Document -> a Markdown leaf bundle: `index.md` with YAML front matter beside its `images/` folder."""
from __future__ import annotations

import re

import yaml

from dreamgen.document import Document, ImageBlock, TextBlock

from .text import document_title, image_alt_texts

# Backslash-escape ASCII punctuation in alt text so it can never close the `![...]` or start markup;
# angle brackets are dropped instead because some renderers do not honour `\<`.
_ALT_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|~\"'&:;=])")


def to_markdown(doc: Document, job_id: str) -> str:
    """The `index.md` of a stored document; image links are relative (`images/00.png`)."""
    front = {"title": document_title(doc), "job": job_id, "document": doc.id, "model": doc.model,
             "seed": doc.params.get("seed"), "created": doc.created}
    if doc.custom_id is not None:
        front["custom_id"] = doc.custom_id
    parts = ["---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1 << 16) + "---\n"]
    alts = image_alt_texts(doc)
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            parts.append(escape_untrusted_markdown(block.text))
        elif isinstance(block, ImageBlock):
            if not block.path:
                raise ValueError(f"document {doc.id}: image {block.index} is not stored yet (no path)")
            parts.append(f"\n\n![{escape_alt(alts[block.index])}]({block.path})\n\n")
    body = re.sub(r"\n{3,}", "\n\n", "".join(parts[1:])).strip("\n")
    return parts[0] + "\n" + body + "\n"


def escape_untrusted_markdown(text: str) -> str:
    """Model text stays Markdown, but raw HTML (and `<...>` autolinks) cannot pass: every `<` becomes
    an entity, which all renderers show as a literal '<'. Images the model links to would be fetched
    from elsewhere, so `![` loses its meaning too."""
    return text.replace("<", "&lt;").replace("![", "!\\[")


def escape_alt(text: str) -> str:
    text = " ".join(text.replace("<", " ").replace(">", " ").split())
    return _ALT_PUNCTUATION.sub(r"\\\1", text)
