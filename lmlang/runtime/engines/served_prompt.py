"""Prompts for a served model: the same rendering as the local engine, sent
as exact token ids where lmlang has the model's tokenizer.

With the tokenizer (`vllm` sources, and servers whose model lmlang finds
locally or is given with `tokenizer:`), a row's prompt is built exactly as
the local decoding loop builds its KV cache (runtime/decode.QueryRun): the
first chunk's ids (with special tokens), a held-back seam space per hole
(token healing), and after each hole the canonical ids of seam + value +
next chunk. The server then continues the very tokens the local model would
see, so greedy results agree up to the numerics of the two engines.

Without it, prompts go as text: the chat template is the server's own
(vLLM's /tokenize with messages, then /detokenize), a trailing space before a
hole is held back as text, and the next text's first token cannot end a
value (the server tokenizes; see served_holes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import LmlangRuntimeError
from ..prompt import RenderedPrompt

if TYPE_CHECKING:
    from ...constraints.vocab import TokenizerInfo


@dataclass
class Tokens:
    """A model's tokenizer without its weights: what prompts and healing need."""

    tokenizer: Any  # a transformers tokenizer
    tok_info: TokenizerInfo
    eos_ids: frozenset
    folder: str

    def encode(self, text: str, first: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=first).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


@lru_cache(maxsize=8)
def load_tokens(folder: str) -> Tokens:
    """The tokenizer of a local model folder, once per process (the EOS ids the
    local engine stops on: the tokenizer's, plus generation_config.json's)."""
    from transformers import AutoTokenizer

    from ...constraints.vocab import TokenizerInfo

    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise LmlangRuntimeError(f"cannot load the tokenizer in {folder}: {e}") from None
    eos = {tok.eos_token_id}
    for name in ("generation_config.json", "config.json"):
        try:
            gen = json.loads((Path(folder) / name).read_text()).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        if gen is not None:
            eos.update(gen if isinstance(gen, list) else [gen])
            break
    return Tokens(tok, TokenizerInfo.from_hf(tok), frozenset(e for e in eos if e is not None), folder)


@dataclass
class Cursor:
    """One row's prompt as its holes are filled: `prompt()` is what the request
    for the current hole continues; `advance(value)` moves past it."""

    rendered: RenderedPrompt
    tokens: Tokens | None
    heals: list = field(default_factory=list)  # per hole: seam text held back ("" for none)
    held: list = field(default_factory=list)  # per hole: the held-back seam as ids (exact path)
    terminators: list = field(default_factory=list)  # per hole: text of the next chunk's first token
    next_tokens: list = field(default_factory=list)  # per hole: the next chunk's first token id (exact path)
    ids: list | None = None  # exact path: the prompt so far
    text: str | None = None  # text path: the prompt so far
    hole: int = 0
    first_ids: list = field(default_factory=list)  # exact path: the healed first chunk (distribution)

    @classmethod
    def start(cls, rendered: RenderedPrompt, tokens: Tokens | None) -> "Cursor":
        cur = cls(rendered, tokens)
        if tokens is not None:
            cur._start_exact()
        else:
            cur._start_text()
        return cur

    def _start_exact(self) -> None:
        from ...constraints.hole import seam_to_heal

        tk, chunks = self.tokens, self.rendered.chunks
        assert tk is not None  # start() takes the exact path only with tokens
        ids = [tk.encode(c, first=(i == 0)) if c else [] for i, c in enumerate(chunks)]
        if not ids[0]:
            ids[0] = [min(tk.eos_ids)]  # a prompt that opens with a hole starts after EOS (as decode.QueryRun)
        for i in range(len(self.rendered.holes)):
            heal = seam_to_heal(ids[i], tk.decode, tk.eos_ids, tk.tok_info)
            self.heals.append(heal)
            self.held.append(ids[i][-1:] if heal else [])
            if heal:
                ids[i] = ids[i][:-1]
        for i in range(len(self.rendered.holes)):
            nxt = ids[i + 1] if i + 1 < len(ids) else []
            token = nxt[0] if nxt else None
            self.next_tokens.append(token)
            self.terminators.append(tk.decode([token]) if token is not None and token not in tk.eos_ids else None)
        self.first_ids = list(ids[0])
        self.ids = list(ids[0])

    def _start_text(self) -> None:
        chunks = self.rendered.chunks
        for i in range(len(self.rendered.holes)):
            c = chunks[i]
            self.heals.append(" " if c.endswith(" ") and len(c) > 1 and not c[-2].isspace() else "")
            self.terminators.append(None)
        self.text = chunks[0][:-1] if self.heals and self.heals[0] else chunks[0]

    def prompt(self, with_seam: bool = False) -> list[int] | str:
        """The prompt for the current hole; with_seam: the held-back seam given
        back (for a hole whose request cannot carry it, see served_holes)."""
        i = self.hole
        if self.ids is not None:
            return list(self.ids) + (list(self.held[i]) if with_seam else [])
        assert self.text is not None  # the text path: _start_text set it
        return self.text + (self.heals[i] if with_seam else "")

    def advance(self, value: str) -> None:
        """Past hole `self.hole` with `value`: the canonical seam + value + next chunk."""
        i = self.hole
        self.hole += 1
        if self.hole >= len(self.rendered.holes):
            return
        chunk = self.rendered.chunks[i + 1]
        piece = self.heals[i] + value + chunk
        if self.ids is not None:
            assert self.tokens is not None  # the exact path (ids) has tokens
            feed = self.tokens.encode(piece)
            if self.heals[i + 1] and feed:
                self.held[i + 1] = feed[-1:]
                feed = feed[:-1]  # the next hole heals its own seam
            if not feed:
                raise LmlangRuntimeError(
                    "two holes touch with no text between them",
                    hint="put literal text between holes so the first one can end",
                )
            self.ids.extend(feed)
        else:
            kept = chunk[:-1] if self.heals[i + 1] else chunk
            if not kept:
                raise LmlangRuntimeError(
                    "two holes touch with no text between them",
                    hint="put literal text between holes so the first one can end",
                )
            self.text += self.heals[i] + value + kept


# ---------------------------------------------------------------- rendering


class TemplateVia:
    """A stand-in tokenizer for prompt.render whose chat template is applied by
    a function: the server's template (vLLM's /tokenize with messages, then
    /detokenize), or a capture of the messages for a chat-only endpoint. The
    rendering itself (interpolation, sentinels, splitting) stays prompt.render's."""

    chat_template = "applied elsewhere"

    def __init__(self, apply, escape_value=None):
        self.apply = apply  # (messages, add_generation_prompt) -> rendered text
        self.escape_value = escape_value  # how a value is written inside that text (None: as is)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return self.apply(messages, add_generation_prompt)
