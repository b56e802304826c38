"""Document -> a Markdown leaf bundle: `index.md` with YAML front matter beside its `images/` folder."""
from __future__ import annotations

import re
from typing import Callable

import yaml

from dreamgen.document import Document, ImageBlock, InputImage, TextBlock

from .text import document_title, image_alt_texts, input_alt_text, leading_heading, prompt_parts, without_first_heading

# Characters that could end the `![...]` of an image or start markup; alt text (text.image_alt_texts) has none,
# and this keeps it so. Dropped, not backslash-escaped: Hugo's renderer shows `\.` in alt text as is.
_ALT_UNSAFE = re.compile(r"[\\\[\]<>`*_{}]")
# `{{` and `{%` open Hugo shortcodes ({{% param "secretKey" %}}, {{< gist >}}) and Liquid/Jinja tags, which site
# builders run over the Markdown before rendering it (issue 33). The `{` of each becomes an entity: no builder
# sees a delimiter, every renderer shows the `{`.
_TEMPLATE_OPENER = re.compile(r"\{(?=[{%])")


def to_markdown(doc: Document, job_id: str | None = None) -> str:
    """The `index.md` of a stored document, a leaf bundle that Hugo (or Jekyll, or any static site generator
    reading YAML front matter) builds as a page: front matter with `title` and `date`; the model's opening
    heading left out when it is the title (themes show the title); image links relative (`images/00.png`)."""
    title = document_title(doc)
    front = {"title": title, "date": doc.created, "job": job_id, "document": doc.id, "model": doc.model,
             "seed": doc.params.get("seed"), "custom_id": doc.custom_id}
    front = {key: value for key, value in front.items() if value is not None}  # e.g. no job: `dreamgen generate`
    return (front_matter(front) + "\n" + given_pictures(doc)
            + markdown_body(doc, drop_heading=leading_heading(doc) == title))


def given_pictures(doc: Document, image_src: Callable[[InputImage], str] | None = None) -> str:
    """With input pictures: the prompt as a quote, each picture where the prompt placed it (to `image_src(given)`,
    else its path), then a blank line. Without: nothing (the front matter holds what there is to know)."""
    if not doc.input_images:
        return ""
    lines = []
    for part in prompt_parts(doc):
        if isinstance(part, InputImage):
            if not part.path:
                raise ValueError(f"document {doc.id}: input picture {part.index} is not stored (no path)")
            src = image_src(part) if image_src else part.path
            lines.append(f"![{escape_alt(input_alt_text(part))}]({src})")
        else:
            lines.append(escape_untrusted_markdown(part))
    quoted = "\n>\n".join("\n".join("> " + line if line else ">" for line in block.split("\n")) for block in lines)
    return "> Prompt:\n>\n" + quoted + "\n\n"


def markdown_body(doc: Document, image_src: Callable[[ImageBlock], str] | None = None,
                  drop_heading: bool = False) -> str:
    """The document's text as Markdown, each picture an image link: to `image_src(block)`, else its path."""
    parts = []
    alts = image_alt_texts(doc)
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            text = without_first_heading(block.text) if drop_heading and block.text.strip() else block.text
            drop_heading = drop_heading and not block.text.strip()
            parts.append(escape_untrusted_markdown(text))
        elif isinstance(block, ImageBlock):
            if not block.path:
                raise ValueError(f"document {doc.id}: image {block.index} is not stored yet (no path)")
            src = image_src(block) if image_src else block.path
            parts.append(f"\n\n![{escape_alt(alts[block.index])}]({src})\n\n")
    body = re.sub(r"\n{3,}", "\n\n", "".join(parts)).strip("\n") + "\n"
    return _TEMPLATE_OPENER.sub("&#123;", body)  # whole, so a `{` ending one block and one opening the next count


def front_matter(values: dict) -> str:
    return "---\n" + yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=1 << 16) + "---\n"


def escape_untrusted_markdown(text: str) -> str:
    """Model text stays Markdown, but raw HTML (and `<...>` autolinks) cannot pass: every `<` becomes
    an entity, which all renderers show as a literal '<'. Images the model links to would be fetched
    from elsewhere, so `![` loses its meaning too. Template delimiters (`{{`, `{%`) stay literal text (and
    markdown_body looks again over the whole, where two pieces meet)."""
    return _TEMPLATE_OPENER.sub("&#123;", text.replace("<", "&lt;").replace("![", "!\\["))


def escape_alt(text: str) -> str:
    return " ".join(_ALT_UNSAFE.sub(" ", text).split())
