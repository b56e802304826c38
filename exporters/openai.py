"""A stored Document as the body of an OpenAI Batch API response, so that a pipeline built for the Batch API
reads dreamgen's results unchanged: `choices[0].message.content` (chat) and `choices[0].text` (completions)
hold the document as Markdown with its pictures linked by URL; `dreamgen` holds the document itself and the
URLs of its pictures and page.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from dreamgen.document import Document, ImageBlock

from .markdown import markdown_body

COMPLETIONS = "/v1/completions"
# Why generation stopped, in the Batch API's words.
FINISH_REASONS = {"eos": "stop", "image_only": "stop", "max_new_tokens": "length", "context_full": "length"}


def completion_body(doc: Document, url_for: Callable[[str], str]) -> dict:
    """The response body for `doc`; url_for(path in the document folder) is where a reader fetches that file."""
    def image_url(block: ImageBlock) -> str:
        return url_for(block.path)

    content = markdown_body(doc, image_src=image_url)
    finish = FINISH_REASONS.get(doc.stop_reason, "stop")
    if doc.request_url == COMPLETIONS:  # answered as OpenAI answers /v1/completions
        kind, choice = "text_completion", {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}
    else:  # a chat request, or dreamgen's own line; `text` too, for a reader written for completions
        kind, choice = "chat.completion", {"index": 0, "message": {"role": "assistant", "content": content},
                                           "text": content, "finish_reason": finish, "logprobs": None}
    body = {"id": doc.id, "object": kind, "created": _unix_time(doc.created), "model": doc.model,
            "choices": [choice]}
    body["dreamgen"] = {"document": doc.to_dict(), "images": [image_url(b) for b in doc.images],
                        "page": url_for("index.html")}
    return body


def error_line(entry: dict) -> dict:
    """An errors.jsonl entry as a Batch API error line."""
    return {"id": entry["id"], "custom_id": entry.get("custom_id") or entry["id"], "response": None,
            "error": {"code": entry.get("error") or "error", "message": entry.get("message") or ""}}


def result_line(doc: Document, url_for: Callable[[str], str]) -> dict:
    return {"id": doc.id, "custom_id": doc.custom_id or doc.id,
            "response": {"status_code": 200, "request_id": doc.id, "body": completion_body(doc, url_for)},
            "error": None}


def _unix_time(stamp: str | None) -> int | None:
    """Epoch seconds of an ISO 8601 time such as 2026-11-28T10:15:00Z (the Batch API's `created`)."""
    if not stamp:
        return None
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())
