"""OpenAI Batch API (and vLLM run-batch) request lines as prompt lines.

    {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "...", "messages": [{"role": "user", "content": "Write about a red circle"}],
              "max_tokens": 200, "temperature": 0.7, "top_p": 0.9, "seed": 1}}

becomes {"custom_id": "a", "prompt": "Write about a red circle", "max_new_tokens": 200, "temperature": 0.7,
"top_p": 0.9, "seed": 1}, which the prompt file check then treats like any line. `/v1/completions` lines give
`body.prompt`. The prompt of a chat line is its user message; system (or developer) messages go before it,
separated by a blank line, because DreamLLM's chat format has a fixed system line of its own. Earlier turns
of a conversation (assistant messages, several user messages) cannot be one document, so they are an error.
`body.model` names the requester's model and is not used: the job's --model decides. dreamgen's own
parameters (steps, guidance, ...) may be given in the body too. Anything else is an error naming it.
Image parts (`{"type": "image_url", "image_url": {"url": ...}}`) become input pictures, placed where they
stand in the message.
"""
from __future__ import annotations

from ..errors import ParamsError, PromptFileError
from ..params import PARAM_NAMES, GenerationParams

LINE_FIELDS = ("custom_id", "method", "url", "body")
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
# The Batch API's sampling fields, and the parameter each one sets.
BODY_PARAMS = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
               "temperature": "temperature", "top_p": "top_p", "seed": "seed"}
# Fields whose one value dreamgen can honour (anything else they could ask for, it cannot do).
BODY_FIXED = {"n": 1, "stream": False}
BODY_OWN = ("title", "images") + tuple(n for n in PARAM_NAMES if n not in BODY_PARAMS.values())
INSTRUCTION_ROLES = ("system", "developer")
IMAGE_MARK = "<image>"  # where an input picture goes in a prompt (see the prompt file formats)


def is_batch_request(item: dict) -> bool:
    """A line written for the Batch API rather than in dreamgen's own fields."""
    return "body" in item or "method" in item or "url" in item


class BatchItem(dict):
    """A request line as a prompt line, with the endpoint it was sent to (`url`): a completions request is
    answered as a completion, a chat request as a chat completion. An attribute, not a key, so no prompt file
    (a YAML item, a CSV column) can set it."""

    url: str = "/v1/chat/completions"


def batch_request_item(path, line: int, request: dict) -> dict | PromptFileError:
    """The prompt line a Batch API request line stands for, or the problem that makes it none."""
    try:
        return _item(path, line, request)
    except PromptFileError as e:
        return e


def _item(path, line: int, request: dict) -> dict:
    def fail(reason, field=None):
        raise PromptFileError(path, line, reason, field=field)

    unknown = [name for name in request if name not in LINE_FIELDS]
    if unknown:
        fail(f"unknown field(s) {_names(unknown)} on a Batch API line; it has {_names(LINE_FIELDS)}")
    if request.get("method", "POST") != "POST":
        fail(f"must be \"POST\", got {request.get('method')!r}", "method")
    url = request.get("url")
    if url not in ENDPOINTS:
        fail(f"must be {' or '.join(ENDPOINTS)} (dreamgen writes documents), got {url!r}", "url")
    body = request.get("body")
    if not isinstance(body, dict):
        fail("must be an object (the request's body)", "body")
    text_field = "messages" if url == "/v1/chat/completions" else "prompt"
    known = {text_field, "model", *BODY_PARAMS, *BODY_FIXED, *BODY_OWN}
    unknown = sorted(name for name in body if name not in known)
    if unknown:
        fail(f"unknown field(s) {_names(unknown)}: dreamgen maps {', '.join(BODY_PARAMS)}, takes n = 1, "
             f"stream = false, model (not used: --model decides) and its own parameters", "body")

    item = BatchItem({"custom_id": request["custom_id"]} if "custom_id" in request else {})
    item.url = url
    if text_field == "messages":
        item["prompt"], images = _chat_prompt(body.get("messages"), fail)
        if images:
            item["images"] = images
    elif not isinstance(body.get("prompt"), str):
        fail("must be a string (one prompt per line)", "body.prompt")
    else:
        item["prompt"] = body["prompt"]
    for name, only in BODY_FIXED.items():
        if name in body and body[name] != only:
            fail(f"must be {str(only).lower()}: one document per line, written whole", f"body.{name}")
    for name, param in BODY_PARAMS.items():
        if body.get(name) is not None:
            item[param] = _checked(body[name], param, lambda reason, n=name: fail(reason, f"body.{n}"))
    for name in BODY_OWN:
        if name in body:
            if name == "images" and "images" in item:
                fail("give input pictures as image parts of the message or as 'images', not both", "body.images")
            item[name] = body[name]
    return item


def _chat_prompt(messages, fail) -> tuple[str, list]:
    """(prompt text, input pictures) of a chat request's messages."""
    if not isinstance(messages, list) or not messages:
        fail("must be a non-empty list of {\"role\", \"content\"} messages", "body.messages")
    instructions, user, images = [], None, []
    for index, message in enumerate(messages):
        where = f"body.messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            fail("must be an object with a role and a content", where)
        role = message["role"]
        if role in INSTRUCTION_ROLES:
            if user is not None:
                fail(f"a {role} message after the user's: put it first", where)
            instructions.append(_content_text(message.get("content"), where, images, fail, pictures=False))
        elif role == "user":
            if user is not None:
                fail("a second user message: dreamgen writes one document from one user message, not a "
                     "conversation", where)
            user = _content_text(message.get("content"), where, images, fail, pictures=True)
        else:
            fail(f"role {role!r}: dreamgen writes one document from one user message (and system messages), "
                 "not a conversation's earlier turns", where)
    if user is None:
        fail("has no user message", "body.messages")
    return "\n\n".join([*instructions, user]), images


def _content_text(content, where: str, images: list, fail, pictures: bool) -> str:
    """A message's text: a string, or text parts joined (image parts, in the user message, become pictures)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        fail("must be a string or a list of content parts", f"{where}.content")
    texts = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and pictures:
            url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
            if not isinstance(url, str) or url.startswith("data:"):
                fail("needs image_url.url: a local path or an s3:// URL (data: URLs are not read)", at)
            images.append(url)
            texts.append(IMAGE_MARK)
        else:
            fail("must be a {\"type\": \"text\", \"text\": ...} part" + (" or an image_url part" if pictures else ""),
                 at)
    return " ".join(texts)


def _checked(value, param: str, fail):
    """A mapped value, checked as that parameter on its own, so a problem names the body's field."""
    try:
        GenerationParams(**{param: value})
    except (ParamsError, TypeError) as e:
        fail(getattr(e, "rule", None) or str(e))
    return value


def _names(names) -> str:
    return ", ".join(f"'{n}'" for n in names)
