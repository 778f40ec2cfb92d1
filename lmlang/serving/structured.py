"""lmlang constraints on a served model: request fields out, validation of what comes back.

Contract (what the checker and the runtime's server backend call)
-----------------------------------------------------------------

    ServerFeatures(engine="vllm", structured=True, backend="guidance")
        what a server enforces: vLLM's extra fields (`structured_outputs`, `stop_reason`,
        `include_stop_str_in_output`) or only the plain OpenAI API; whether structured outputs
        are honoured (Capabilities.structured_outputs); vLLM's structured-outputs backend
        ("guidance" for servers lmlang manages; "auto"/"xgrammar" for others).
        ServerFeatures.from_capabilities(caps, backend=...)
    to_request(c, features) -> ServedConstraint | Unsupported          torch-free, no network
        Unsupported(feature, message, hint).problem(model) -> checker.ConstraintProblem
        ServedConstraint.kwargs() -> dict for client.completion/chat (structured, stop, include_stop,
                                    max_tokens: only what the constraint sets)
        ServedConstraint.value_of(completion) -> ServedValue(value, stop_matched, ended_by)
    validate(value, c, *, stop_matched=None, ended_by="eos", completion_tokens=None,
             semantic_json=False, url="", request="") -> None     raises ServedValueError
    check_value(...) -> str | None                                 the same check, returning the problem
    served_value(completion, served, c, url=...) -> str           value_of + validate (+ JSON layout)

How each constraint travels (one lowering: lmlang.constraints.lower.lower, as the local engine)
--------------------------------------------------------------------------------------------

    plan                       vLLM, backend guidance (exact)          vLLM, other backends / plain OpenAI
    choice (options)           structured_outputs.choice               same / unsupported
    regex, int, float, bool    structured_outputs.regex                same / unsupported
    int with bounds (json)     structured_outputs.json (+ x-guidance)  json; layout normalised / unsupported
    json schema                structured_outputs.json: the schema     json; the server's whitespace is
                               lmlang's llguidance compiles, with      accepted, checked with jsonschema and
                               x-guidance = lmlang's layout            re-serialised / unsupported
    lark grammar               structured_outputs.grammar (Lark)       same / unsupported
    regex & len(x) <= n        structured_outputs.grammar: the Lark    unsupported (needs llguidance's `&`)
                               `&` intersection lower() builds
    free text, len(x) <= n     structured_outputs.regex (?s:.{0,n})    same / unsupported
    json/grammar & len(x)<=n   unsupported: no server form bounds the characters of such a value
    stops                      stop + include_stop_str_in_output=true; the value is trimmed by the
                               `stop_reason` vLLM returns (stops may mix `at` and `before`).
                               Plain OpenAI: `stops before` only (the API drops the stop string)
    tokens(x) <= n             max_tokens = n. The server cuts at n without lmlang's closing path, so a
                               shape cut short fails validation (an error, never an invalid value)

Validation re-checks every value with lmlang's own engine: the llguidance byte-level matcher
the checker uses (lmlang.constraints.check), so a server that ignored or loosened a constraint
is caught. A value ended by a stop string need only be a prefix of its shape (as locally: a
stop ends the value early); one ended by EOS must be complete.
"""

from __future__ import annotations

import json

from ..constraints.check import ConstraintProblem, _matcher
from ..constraints.lower import LoweringError, Plan, llguidance_json_options, lower
from ..constraints.spec import Constraint
from ..errors import LmlangRuntimeError
from ..frozen import field, frozen

GUIDANCE = "guidance"
UNSUPPORTED_CODE = "served-unsupported"


class ServedValueError(LmlangRuntimeError):
    """A served model returned a value that breaks its constraint."""


@frozen
class ServerFeatures:
    engine: str = "vllm"  # "vllm": vLLM's extra request fields | "openai": the plain OpenAI API
    structured: bool = True  # structured outputs honoured (see client.Capabilities)
    backend: str = GUIDANCE  # vLLM's structured-outputs backend

    @classmethod
    def from_capabilities(cls, caps, backend: str = "auto") -> "ServerFeatures":
        """For a server lmlang did not start: vLLM when /version answered, else plain OpenAI."""
        engine = "vllm" if caps.version else "openai"
        return cls(engine, bool(caps.structured_outputs), backend)

    @property
    def exact(self) -> bool:
        return self.engine == "vllm" and self.structured and self.backend == GUIDANCE


@frozen
class Unsupported:
    feature: str  # what cannot run on this server, e.g. "a JSON schema"
    message: str
    hint: str = ""

    def problem(self, model: str) -> ConstraintProblem:
        return ConstraintProblem(
            f"served model '{model}' cannot enforce {self.feature}: {self.message}", self.hint, code=UNSUPPORTED_CODE
        )


@frozen
class ServedValue:
    value: str  # stop trimmed as the constraint says
    stop_matched: str | None  # the stop string that ended it
    ended_by: str  # "eos" | "stop" | "length"


@frozen
class ServedConstraint:
    plan: Plan
    form: str  # "free" | "choice" | "regex" | "json" | "grammar"
    structured: dict | None = None  # the `structured_outputs` field
    stops: tuple[str, ...] = ()
    include_stop: bool | None = None
    max_tokens: int | None = None
    semantic_json: bool = False  # the server's JSON layout differs: validate by meaning
    notes: tuple[str, ...] = field(default=(), compare=False)

    def kwargs(self) -> dict:
        out: dict = {}
        if self.structured is not None:
            out["structured"] = self.structured
        if self.stops:
            out["stop"] = list(self.stops)
        if self.include_stop is not None:
            out["include_stop"] = self.include_stop
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        return out

    def value_of(self, completion) -> ServedValue:
        """The hole's value from a completion: trims a `stops before` string the server kept."""
        text = completion.text
        reason = completion.stop_reason
        if completion.finish_reason == "length":
            return ServedValue(text, None, "length")
        if isinstance(reason, str) and reason in self.stops:
            if self.include_stop:  # the server kept it: drop it unless the stop is `at`
                keep = any(s.text == reason and s.include for s in self.plan.stops)
                if not keep and text.endswith(reason):
                    text = text[: -len(reason)]
            return ServedValue(text, reason, "stop")
        return ServedValue(text, None, "eos")


# ---------------------------------------------------------------------------- mapping
def to_request(
    c: Constraint | None, features: ServerFeatures = ServerFeatures(), payload: bool = True
) -> ServedConstraint | Unsupported:
    """The request fields that make a server enforce `c`, or why it cannot.
    payload=False: only whether it can (the checker's question); a JSON
    schema's guidance form, which needs llguidance, is not built."""
    try:
        plan = lower(c)
    except LoweringError as e:
        return Unsupported("this combination of constraints", str(e))
    stops = _stops(plan, features)
    if isinstance(stops, Unsupported):
        return stops
    shape = _shape(plan, features, payload)
    if isinstance(shape, Unsupported):
        return shape
    form, structured, semantic = shape
    return ServedConstraint(
        plan,
        form,
        structured,
        stops=tuple(s.text for s in plan.stops),
        include_stop=stops,
        max_tokens=plan.max_tokens,
        semantic_json=semantic,
        notes=_notes(plan),
    )


def _stops(plan: Plan, features: ServerFeatures) -> bool | None | Unsupported:
    """include_stop_str_in_output: True whenever there are stops on vLLM (value_of trims by
    stop_reason), None (the API's default: dropped) for `stops before` on plain OpenAI."""
    if not plan.stops:
        return None
    if features.engine == "vllm":
        return True
    if any(s.include for s in plan.stops):
        return Unsupported(
            "`stops at` (a stop string kept in the value)",
            "the OpenAI API drops the stop string and does not say which stop matched",
            "use `stops before`, or serve the model with vLLM",
        )
    return None


def _shape(plan: Plan, features: ServerFeatures, payload: bool = True):
    """(form, structured_outputs, semantic_json) or Unsupported."""
    limited = plan.max_chars is not None
    if plan.kind == "free":
        if not limited:
            return "free", None, False
        if not features.structured:
            return _no_structured("a character bound (len(x) <= n)")
        return "regex", {"regex": f"(?s:.{{0,{plan.max_chars}}})"}, False
    if not features.structured:
        return _no_structured(_what(plan))
    if plan.options is not None:
        if not plan.options:
            return Unsupported("this choice", "no option satisfies every constraint on the hole")
        return "choice", {"choice": list(plan.options)}, False
    if limited and plan.kind == "json" or limited and plan.kind == "lark" and not plan.source.endswith("&len"):
        return Unsupported(
            f"len(x) <= {plan.max_chars} on {_what(plan)}",
            "no server request field bounds the characters of such a value",
            "bound it with tokens(x) <= n instead",
        )
    if plan.kind == "regex":
        return "regex", {"regex": plan.text}, False
    if plan.kind == "json":
        if features.backend == GUIDANCE:
            return "json", {"json": guidance_schema(plan) if payload else {}}, False
        return "json", {"json": json.loads(plan.text)}, True
    # lark: a user grammar, or a regex intersected with a length bound (llguidance's `&`)
    if plan.source.endswith("&len") and features.backend != GUIDANCE:
        return Unsupported(
            f"a regex together with len(x) <= {plan.max_chars}",
            f"the intersection needs the llguidance backend (this server uses {features.backend})",
            "start vLLM with --structured-outputs-config '{\"backend\": \"guidance\"}'",
        )
    return "grammar", {"grammar": plan.text}, False


def _no_structured(feature: str) -> Unsupported:
    return Unsupported(
        feature,
        "the server does not honour structured outputs",
        "serve the model with vLLM (structured_outputs), or drop the constraint",
    )


def _what(plan: Plan) -> str:
    return {
        "choice": "a choice",
        "regex": "a regex",
        "int": "an int",
        "float": "a float",
        "bool": "a bool",
        "json": "a JSON schema",
        "grammar": "a grammar",
    }.get(plan.source.split("&")[0].split("+")[0], "a constrained value")


def guidance_schema(plan: Plan) -> dict:
    """The schema exactly as lmlang's llguidance backend compiles it (sound rewrites applied,
    lmlang's JSON layout in x-guidance, which vLLM's guidance backend keeps over its defaults)."""
    from ..constraints.jsonfix import llguidance_schema_grammar

    grammar, err = llguidance_schema_grammar(plan.text, llguidance_json_options())
    if err or not grammar:
        schema = json.loads(plan.text)
        if isinstance(schema, dict):
            schema = {**schema, "x-guidance": llguidance_json_options()}
        return schema
    return json.loads(grammar)["grammars"][0]["json_schema"]


def _notes(plan: Plan) -> tuple[str, ...]:
    notes = []
    if plan.max_tokens is not None and plan.has_shape:
        notes.append("the server cuts at max_tokens without lmlang's closing path; a value cut short fails validation")
    if plan.options is not None:
        notes.append(
            "the server accepts any tokenization of an option; lmlang decodes the canonical one, "
            "so greedy picks can differ"
        )
    return tuple(notes)


# ---------------------------------------------------------------------------- validation
def check_value(
    value: str,
    c: Constraint | None,
    *,
    stop_matched: str | None = None,
    ended_by: str = "eos",
    completion_tokens: int | None = None,
    semantic_json: bool = False,
) -> str | None:
    """Why `value` breaks `c` (None when it satisfies it). `stop_matched` is the stop that ended
    it (then the value may be an unfinished prefix of its shape, as in local decoding)."""
    plan = lower(c)
    for s in plan.stops:
        i = value.find(s.text)
        if i >= 0 and not (s.include and stop_matched == s.text and i + len(s.text) == len(value)):
            return f"the value contains the stop string {s.text!r}"
    if stop_matched is not None and stop_matched not in {s.text for s in plan.stops}:
        return f"the value ended at {stop_matched!r}, which is not one of its stop strings"
    if plan.max_chars is not None and len(value) > plan.max_chars:
        return f"the value has {len(value)} characters, more than len(x) <= {plan.max_chars}"
    if plan.max_tokens is not None and completion_tokens is not None and completion_tokens > plan.max_tokens:
        return f"the value took {completion_tokens} tokens, more than tokens(x) <= {plan.max_tokens}"
    if not plan.has_shape:
        return None
    if plan.options is not None:
        return None if value in plan.options else f"{value!r} is not one of the options {list(plan.options)}"
    if semantic_json and plan.kind == "json":
        return _check_json_meaning(value, plan)
    return _check_shape(value, plan, stop_matched, ended_by)


def _check_shape(value: str, plan: Plan, stop_matched: str | None, ended_by: str) -> str | None:
    """Feed the bytes through lmlang's exact byte-level llguidance matcher."""
    m = _matcher(plan)
    if m.is_error():
        return f"lmlang cannot check this constraint: {m.get_error().strip().splitlines()[0]}"
    data = value.encode("utf-8")
    include_kept = (
        stop_matched is not None
        and value.endswith(stop_matched)
        and any(s.text == stop_matched and s.include for s in plan.stops)
    )
    fed = data if include_kept or stop_matched is None else data + stop_matched.encode("utf-8")
    for i, b in enumerate(fed):
        if not m.consume_token(b):
            shown = fed[:i].decode("utf-8", errors="replace")
            return f"the value leaves its {plan.source} shape after {shown!r}"
    if stop_matched is None and not m.is_accepting():
        if ended_by == "length":
            return "the value was cut at max_tokens before it was complete"
        return "the value ended before it was complete"
    return None


def _check_json_meaning(value: str, plan: Plan) -> str | None:
    import jsonschema

    try:
        doc = json.loads(value)
    except ValueError as e:
        return f"the value is not JSON ({e})"
    try:
        jsonschema.validate(doc, json.loads(plan.text))
    except jsonschema.ValidationError as e:
        return f"the value breaks its JSON schema: {e.message}"
    return None


def validate(value: str, c: Constraint | None, *, url: str = "", request: str = "", **kw) -> None:
    """check_value, raising ServedValueError that names the server and the request."""
    problem = check_value(value, c, **kw)
    if problem is not None:
        where = f"server {url}" + (f", {request}" if request else "")
        raise ServedValueError(
            f"{where}: returned {_short(value)}, which breaks its constraint: {problem}",
            hint="the server did not enforce the constraint; check its structured-outputs backend and version",
        )


def served_value(completion, served: ServedConstraint, c: Constraint | None, url: str = "") -> str:
    """The validated value of one hole from a completion (JSON re-serialised to lmlang's layout
    when the server's layout differs)."""
    got = served.value_of(completion)
    validate(
        got.value,
        c,
        url=url,
        request=completion.request,
        stop_matched=got.stop_matched,
        ended_by=got.ended_by,
        completion_tokens=completion.completion_tokens,
        semantic_json=served.semantic_json,
    )
    if served.semantic_json and got.stop_matched is None:
        return json.dumps(json.loads(got.value), ensure_ascii=False)
    return got.value


def _short(text: str, n: int = 80) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


__all__ = [
    "ServerFeatures",
    "ServedConstraint",
    "ServedValue",
    "Unsupported",
    "ServedValueError",
    "to_request",
    "check_value",
    "validate",
    "served_value",
    "guidance_schema",
]
