"""One hole on a served model: the request fields that hold it, and its
value read back and validated.

The fields come from lmlang.serving.structured.to_request (the one lowering
the local engine uses too), adjusted where the local decoding loop does more
than the constraint itself says:

* token healing. Locally, a prompt chunk ending in a bare space token holds
  the space back and the hole's first token must start with it (" 42",
  not " " then "42"). On a server the prompt goes without that space and
  the request's shape is the space followed by the hole's shape (a choice of
  " " + option, the regex `\\x20(?:R)`, free text `\\x20(?s:.*)`); the space
  is cut off the value again. A Lark grammar on llguidance gets a new
  start rule, `start: " " lmlang_value` (its own start renamed). JSON holes
  cannot be prefixed through the request fields: there the space stays in
  the prompt (the value is still exact; the greedy path can differ, see
  docs/serving.md).
* canonical choices. Locally a choice is decoded along its options' own
  tokenizations ("London", never "L" + "ondon"). Where lmlang has the
  tokenizer and the server runs llguidance, the request is a grammar of
  those token paths (`<[id]>` token references), so the server picks among
  exactly the same tokens.
* the next text's first token. Locally a complete value also ends when the
  model writes the first token of the literal text after the hole (`[n].`
  ends n at the period). On a server that token is added to the shape as an
  optional suffix and ends the request (a stop token after a choice's token
  paths; a stop string after an int, bool or float whose characters it
  cannot continue, and after a Lark grammar on llguidance). For other
  regexes and JSON only EOS or a complete shape ends the value.
* the budget: `tokens(x) <= n` or lmlang's default (256) is `max_tokens`.

Every value is checked again with lmlang's own matcher (structured.validate)
before it is handed on: a server that loosened a constraint is an error
naming the server and the request, never a wrong value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ...constraints import spec as C
from ...constraints.hole import DEFAULT_MAX_TOKENS, with_default_budget
from ...constraints.lower import escape_regex
from ...errors import LmlangRuntimeError
from ...serving.structured import (
    ServedConstraint,
    ServedValueError,
    ServerFeatures,
    Unsupported,
    check_value,
    to_request,
)

# Characters that can continue a complete value of each regex source (a
# terminator starting with one of them could be read as more of the value).
_CONTINUES = {"int": set("0123456789"), "bool": set(), "float": set("0123456789.eE+-")}


@dataclass(frozen=True)
class HoleRequest:
    name: str
    constraint: C.Constraint | None  # what the value is validated against (default budget included)
    served: ServedConstraint
    structured: dict | None  # the `structured_outputs` field sent (healing/terminator applied)
    stops: tuple[str, ...]  # stop strings sent (the constraint's, then the terminator)
    heal: str  # text the generated text starts with, cut off the value
    terminator: str | None  # the next text's first token, when it may end the value
    max_tokens: int
    stop_token: int | None = None  # the terminator as a stop token (canonical choices)

    def kwargs(self) -> dict:
        out: dict = {"max_tokens": self.max_tokens}
        if self.structured is not None:
            out["structured"] = self.structured
        if self.stops:
            out["stop"] = list(self.stops)
            if self.served.include_stop is not None or self.terminator:
                out["include_stop"] = True  # the value is trimmed by the stop_reason vLLM returns
        if self.stop_token is not None:
            out["extra"] = {"stop_token_ids": [self.stop_token]}  # vLLM leaves it out of the text
        return out

    def value(self, completion, where: str) -> tuple[str, str]:
        """(the hole's validated text, what ended it: eos | stop | length | next-text);
        ServedValueError naming `where` (the server) and the request when it breaks the constraint."""
        text, reason = completion.text, completion.stop_reason
        user_stops = self.served.stops
        stop_matched, ended_by = None, "eos"
        if completion.finish_reason == "length":
            ended_by = "length"
        elif isinstance(reason, str) and reason in user_stops:
            stop_matched, ended_by = reason, "stop"
            keep = any(s.text == reason and s.include for s in self.served.plan.stops)
            if not keep and text.endswith(reason):
                text = text[: -len(reason)]
        elif isinstance(reason, str) and reason == self.terminator:
            ended_by = "next-text"
            if text.endswith(reason):
                text = text[: -len(reason)]
        elif reason is not None and reason == self.stop_token:
            ended_by = "next-text"
        if self.heal:
            if not text.startswith(self.heal):
                raise ServedValueError(
                    f"{where}, {completion.request}: returned {text[:60]!r}, which does not "
                    f"start with the held-back seam {self.heal!r}",
                    hint="the server did not enforce the request's shape",
                )
            text = text[len(self.heal) :]
        tokens = None if ended_by == "next-text" else completion.completion_tokens
        problem = check_value(
            text,
            self.constraint,
            stop_matched=stop_matched,
            ended_by=ended_by,
            completion_tokens=tokens,
            semantic_json=self.served.semantic_json,
        )
        if problem is not None:
            shown = text if len(text) <= 80 else text[:79] + "…"
            raise ServedValueError(
                f"{where}, {completion.request}: returned {shown!r} for [{self.name}], which "
                f"breaks its constraint: {problem}",
                hint="the server did not enforce the constraint; check its structured-outputs backend and version",
            )
        if self.served.semantic_json and stop_matched is None:
            text = json.dumps(json.loads(text), ensure_ascii=False)
        return text, ended_by


def plan_hole(
    name: str,
    constraint: C.Constraint | None,
    features: ServerFeatures,
    model: str,
    heal: str = "",
    terminator: str | None = None,
    tokens=None,
    next_token: int | None = None,
) -> HoleRequest:
    """The request for one hole. `heal`: the seam text held back from the
    prompt; `terminator`: the text of the next chunk's first token (None: no
    next text); `tokens` (served_prompt.Tokens) and `next_token` (that token's
    id) when lmlang has the model's tokenizer."""
    c = with_default_budget(constraint)
    served = to_request(c, features)
    if isinstance(served, Unsupported):
        p = served.problem(model)
        raise LmlangRuntimeError(f"[{name}]: {p.message}", hint=p.hint)
    plan = served.plan
    budget = plan.max_tokens if plan.max_tokens is not None else DEFAULT_MAX_TOKENS
    if served.form == "choice" and tokens is not None and features.exact:
        return _canonical_choice(name, c, served, heal, terminator, tokens, next_token, budget)
    structured = served.structured
    if served.form == "grammar" and features.exact and structured is not None:
        return _wrapped_grammar(name, c, served, heal, terminator, budget)
    if heal:
        structured = _healed(served, heal, features)
        if structured is False:
            heal, structured = "", served.structured
    stops = served.stops
    if terminator and features.engine == "vllm" and _may_end(served, terminator):
        assert structured is not None  # _may_end holds only for choice and regex forms, which carry one
        structured = _with_suffix(served.form, structured, terminator)
        stops = stops + (terminator,) if terminator not in stops else stops
    else:
        terminator = None
    return HoleRequest(name, c, served, structured, stops, heal, terminator, budget)


def _canonical_choice(
    name, c, served: ServedConstraint, heal: str, terminator: str | None, tokens, next_token: int | None, budget: int
) -> HoleRequest:
    """A choice as a grammar of its options' canonical token paths (after the
    held-back seam), optionally followed by the next text's first token."""
    assert served.plan.options is not None  # the choice form: a Choice shape
    paths = [tokens.tok_info.encode(heal + o) for o in served.plan.options]
    body = " | ".join(" ".join(f"<[{t}]>" for t in p) for p in paths if p)
    grammar = f"start: choice\nchoice: {body}\n"
    stop_token = None
    if next_token is not None and terminator and served.stops == () and _may_end(served, terminator):
        grammar = f"start: choice | choice <[{next_token}]>\nchoice: {body}\n"
        stop_token = next_token
    return HoleRequest(name, c, served, {"grammar": grammar}, served.stops, heal, None, budget, stop_token)


def _wrapped_grammar(name, c, served: ServedConstraint, heal: str, terminator: str | None, budget: int) -> HoleRequest:
    """A Lark grammar (llguidance) under a new start rule: the held-back seam
    in front, and the next text's first token as an optional end, which the
    grammar admits only after a complete value (the local engine's rule; a
    grammar that could also read that token as more of its value may end
    earlier here than locally). The token is a stop string, trimmed off."""
    assert served.structured is not None  # the grammar form always carries its text
    body = (json.dumps(heal) + " " if heal else "") + _VALUE_RULE
    start = f"{body} | {body} {json.dumps(terminator)}" if terminator else body
    grammar = f"start: {start}\n{_renamed_start(served.structured['grammar'])}"
    stops = served.stops
    if terminator and terminator not in stops:
        stops = stops + (terminator,)
    return HoleRequest(name, c, served, {"grammar": grammar}, stops, heal, terminator, budget)


_VALUE_RULE = "lmlang_value"
# `start` as a rule name: outside strings, regexes and comments of the Lark text.
_LARK_START = re.compile(r'(//[^\n]*|"(?:\\.|[^"\\])*"|/(?:\\.|[^/\\\n])+/[imslux]*)|\bstart\b')


def _renamed_start(text: str) -> str:
    """The user's grammar with its start rule renamed to _VALUE_RULE."""
    return _LARK_START.sub(lambda m: m.group(1) or _VALUE_RULE, text)


def _healed(served: ServedConstraint, heal: str, features: ServerFeatures):
    """The structured field with the held-back seam in front, or False (give the seam back)."""
    rx = escape_regex(heal)
    form = served.form
    if form == "choice":
        assert served.plan.options is not None  # the choice form: a Choice shape
        return {"choice": [heal + o for o in served.plan.options]}
    if form == "regex":
        assert served.structured is not None  # the regex form always carries its regex
        return {"regex": f"{rx}(?:{served.structured['regex']})"}
    if form == "free" and features.structured and features.engine == "vllm":
        return {"regex": f"{rx}(?s:.*)"}
    return False


def _may_end(served: ServedConstraint, terminator: str) -> bool:
    """Whether the next text's first token can end this value where the local
    engine would let it (a complete value, the token not readable as more of it)."""
    plan = served.plan
    if served.form == "choice":
        opts = plan.options or ()
        return not any(b.startswith(a + terminator[:1]) for a in opts for b in opts if b != a)
    if served.form == "regex" and plan.source in _CONTINUES:
        return terminator[:1] not in _CONTINUES[plan.source]
    return False


def _with_suffix(form: str, structured: dict, terminator: str) -> dict:
    if form == "choice":
        opts = structured["choice"]
        return {"choice": list(opts) + [o + terminator for o in opts]}
    return {"regex": f"(?:{structured['regex']})(?:{escape_regex(terminator)})?"}
