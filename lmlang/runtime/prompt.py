"""Prompt assembly: a query's segments + argument values -> literal chunks
around its holes.

Chat prompts go through the model's own chat template once, with a sentinel
where each hole sits; splitting at the sentinels yields the exact text before,
between and after the holes, so the decoding loop can feed each chunk into the
same KV cache as it goes. Interpolation is a lookup of names and dict keys,
never Python formatting.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..builtins import value_text
from ..errors import LmlangRuntimeError

SENTINEL = "\ue000HOLE{}\ue001"


@dataclass(frozen=True)
class RenderedPrompt:
    chunks: tuple[str, ...]        # len(holes) + 1 pieces of literal text
    holes: tuple[str, ...]

    def display(self) -> str:
        out = [self.chunks[0]]
        for h, c in zip(self.holes, self.chunks[1:]):
            out += [f"[{h}]", c]
        return "".join(out)


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
    holes: list[str] = []

    def seg_text(parts) -> str:
        out = []
        for kind, val in parts:
            if kind == "text":
                out.append(val)
            elif kind == "interp":
                out.append(value_text(lookup(tuple(val), env, loc)))
            else:
                out.append(SENTINEL.format(len(holes)))
                holes.append(val)
        return "".join(out)

    if not chat:
        full = "".join(seg_text(parts) for _role, parts in segments)
    else:
        messages = [{"role": role, "content": seg_text(parts)} for role, parts in segments]
        full = _apply_template(tokenizer, messages)
    chunks, rest = [], full
    for i in range(len(holes)):
        before, sep, rest = rest.partition(SENTINEL.format(i))
        if not sep:
            raise LmlangRuntimeError("the chat template dropped a hole", hint="this model's template rewrites message text")
        chunks.append(before)
    chunks.append(rest)
    return RenderedPrompt(tuple(chunks), tuple(holes))


def _apply_template(tokenizer, messages: list[dict]) -> str:
    ends_with_assistant = messages[-1]["role"] == "assistant"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not ends_with_assistant)
    # A base model without a chat template: a plain, readable transcript.
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if not ends_with_assistant:
        lines.append("Assistant:")
    return "\n".join(lines)
