"""Prompt assembly: a query's segments + argument values -> literal chunks
around its holes, and those chunks -> token ids.

Input values are plain text, always. Two rules keep data from changing a
prompt's structure:

* The chat template never sees a value. It renders the messages with a
  marker where each value and each hole goes (the markers are chosen so
  that no literal text of the query holds them), and the values are put in
  after, at the positions the markers leave. A value that spells a marker,
  or a hole, is just text.
* Every chunk remembers where its values lie (`RenderedPrompt.data`), and
  `encode_text` tokenizes a special token (`<|im_end|>`) inside a value as
  the text it spells. The template's own control tokens stay control tokens.

For ordinary values this changes nothing: the text is the one the template
would have rendered with the values inside, and the ids are the tokenizer's
own tokenization of the whole chunk (tests/runtime/test_seams.py pins them).
Interpolation is a lookup of names and dict keys, never Python formatting.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ..builtins import value_text
from ..errors import LmlangRuntimeError

Span = tuple[int, int]


@dataclass(frozen=True)
class RenderedPrompt:
    chunks: tuple[str, ...]  # len(holes) + 1 pieces of literal text
    holes: tuple[str, ...]
    data: tuple[tuple[Span, ...], ...] = ()  # per chunk: where its values lie ([start, end) characters)

    def display(self) -> str:
        out = [self.chunks[0]]
        for h, c in zip(self.holes, self.chunks[1:]):
            out += [f"[{h}]", c]
        return "".join(out)

    def chunk_ids(self, lm, i: int, before: str = "") -> list[int]:
        """Token ids of chunk i, after `before` (text the model generated,
        plain text like the values). The first chunk gets the tokenizer's
        start tokens (BOS), as a prompt's start."""
        text = before + self.chunks[i]
        if not text:
            return []
        spans: tuple[tuple[int, int], ...] = ((0, len(before)),) if before else ()
        if i < len(self.data):
            spans += tuple((a + len(before), b + len(before)) for a, b in self.data[i])
        return encode_text(lm.tokenizer, text, spans, first=(i == 0 and not before))


def lookup(path: tuple[str, ...], env: dict, loc: str = ""):
    head, *rest = path
    if head not in env:
        raise LmlangRuntimeError(f"'{head}' has no value", hint=f"at {loc}" if loc else "")
    v = env[head]
    for f in rest:
        if not isinstance(v, dict) or f not in v:
            raise LmlangRuntimeError(f"'{'.'.join(path)}': no field '{f}'", hint=f"at {loc}" if loc else "")
        v = v[f]
    return v


def render(segments, env: dict, tokenizer, chat: bool, loc: str = "") -> RenderedPrompt:
    """segments: ((role, ((kind, val), ...)), ...) with kind "text" (the
    script's literal text), "interp" (a value, looked up in env) or "hole"."""
    resolved = [
        (role, [(kind, value_text(lookup(tuple(val), env, loc)) if kind == "interp" else val) for kind, val in parts])
        for role, parts in segments
    ]
    if not chat:
        return _assemble([p for _role, parts in resolved for p in parts])
    return _assemble(_through_template(tokenizer, resolved))


def _assemble(parts) -> RenderedPrompt:
    """Trusted text, values and holes in order -> chunks split at the holes,
    with each chunk's value spans."""
    chunks, spans, holes = [], [], []
    text: list[str] = []
    here: list[Span] = []
    size = 0
    for kind, val in parts:
        if kind == "hole":
            chunks.append("".join(text))
            spans.append(tuple(here))
            holes.append(val)
            text, here, size = [], [], 0
            continue
        if kind == "interp" and val:
            here.append((size, size + len(val)))
        text.append(val)
        size += len(val)
    chunks.append("".join(text))
    spans.append(tuple(here))
    return RenderedPrompt(tuple(chunks), tuple(holes), tuple(spans))


def _through_template(tokenizer, resolved) -> list[tuple[str, str]]:
    """The chat template rendered around markers; the parts again, with the
    template's text as trusted text and each marker replaced by its value
    or hole."""
    literal = "".join(val for _role, parts in resolved for kind, val in parts if kind == "text")
    opener, closer = _marker_pair(literal)
    slots: list[tuple[str, str]] = []
    messages = []
    for role, parts in resolved:
        content = []
        for kind, val in parts:
            if kind == "text":
                content.append(val)
            else:
                content.append(f"{opener}{len(slots)}{closer}")
                slots.append((kind, val))
        messages.append({"role": role, "content": "".join(content)})
    full = _apply_template(tokenizer, messages)
    # A template whose output is a data format (a chat-only server's JSON
    # messages) says how a value is written inside it; text templates take it as is.
    escape = getattr(tokenizer, "escape_value", None) or (lambda v: v)
    out: list[tuple[str, str]] = []
    rest = full
    for k, slot in enumerate(slots):
        marker = f"{opener}{k}{closer}"
        before, sep, rest = rest.partition(marker)
        if not sep or marker in rest or opener in before:
            what = "a hole" if slot[0] == "hole" else "an interpolated value"
            raise LmlangRuntimeError(
                f"the chat template dropped or repeated {what}", hint="this model's template rewrites message text"
            )
        kind, val = slot
        out += [("text", before), (kind, escape(val) if kind == "interp" else val)]
    if opener in rest:
        raise LmlangRuntimeError(
            "the chat template repeated message text", hint="this model's template rewrites message text"
        )
    out.append(("text", rest))
    return out


def _marker_pair(literal: str) -> tuple[str, str]:
    """Two private-use characters that the query's own text never holds
    (values never reach the template, so only the script's text matters)."""
    for c in range(0xE000, 0xF8FF, 2):
        opener, closer = chr(c), chr(c + 1)
        if opener not in literal and closer not in literal:
            return opener, closer
    raise LmlangRuntimeError("the prompt uses every private-use character", hint="remove them from the prompt text")


def _apply_template(tokenizer, messages: list[dict]) -> str:
    ends_with_assistant = messages[-1]["role"] == "assistant"
    if getattr(tokenizer, "chat_template", None):
        # The template comes with the model folder: transformers renders it
        # in a sandbox (no attribute walks to Python internals); whatever it
        # raises is the model's fault, reported as such.
        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=not ends_with_assistant
            )
        except Exception as e:
            raise LmlangRuntimeError(
                f"the model's chat template failed: {type(e).__name__}: {e}",
                hint="fix chat_template in the model's tokenizer_config.json",
            ) from None
    # A base model without a chat template: a plain, readable transcript.
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if not ends_with_assistant:
        lines.append("Assistant:")
    return "\n".join(lines)


# ---------------------------------------------------------------- tokenizing


def encode_text(tokenizer, text: str, data: tuple[Span, ...] = (), first: bool = False) -> list[int]:
    """Token ids of `text`, where the characters in `data` spans are plain
    text: a special token spelled inside them is tokenized as its characters.

    The tokenizer's own tokenization of the whole text is kept whenever no
    special token falls in a value (the normal case, so the ids never depend
    on this function). Otherwise the text is cut at the special tokens that
    lie outside every value (the template's), and each piece between them is
    tokenized with special tokens split."""
    enc = tokenizer(text, add_special_tokens=first, return_offsets_mapping=bool(data))
    ids = list(enc["input_ids"])
    if not data:
        return ids
    control = _control_ids(tokenizer)
    offsets = enc["offset_mapping"]
    if not any(t in control and _inside(o, data) for t, o in zip(ids, offsets)):
        return ids
    n = len(ids)
    lead = 0
    while lead < n and ids[lead] in control and offsets[lead][1] == offsets[lead][0]:
        lead += 1  # start tokens the tokenizer adds (BOS): zero width
    trail = n
    while trail > lead and ids[trail - 1] in control and offsets[trail - 1][1] == offsets[trail - 1][0]:
        trail -= 1
    out, pos = ids[:lead], 0
    for t, (a, b) in zip(ids[lead:trail], offsets[lead:trail]):
        if t in control and b > a and not _inside((a, b), data):
            out += _plain(tokenizer, text[pos:a])
            out.append(t)
            pos = b
    out += _plain(tokenizer, text[pos:])
    return out + ids[trail:]


def _plain(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _inside(offset, data: tuple[Span, ...]) -> bool:
    a, b = offset
    return b > a and any(a < end and start < b for start, end in data)


_CONTROL: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _control_ids(tokenizer) -> frozenset:
    """Ids of the tokenizer's special tokens (what a value may never be)."""
    try:
        hit = _CONTROL.get(tokenizer)
    except TypeError:
        hit = None
    if hit is None:
        ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(tok, "special", False):
                ids.add(int(i))
        hit = frozenset(ids)
        try:
            _CONTROL[tokenizer] = hit
        except TypeError:
            pass
    return hit
