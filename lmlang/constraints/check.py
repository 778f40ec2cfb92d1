"""Check-time validation of constraints: torch-free, no tokenizer, no model.

`check_constraint(c)` returns every problem it finds (the checker attaches spans):
invalid regexes and regex features no backend enforces (backreferences,
lookaround, word boundaries), invalid JSON Schemas (meta-validation) and
keywords no backend enforces (named), invalid Lark grammars (parsed with lark,
then validated by llguidance, which enforces them), and unsatisfiable
combinations (empty choices, length bounds below every possible value, shapes
whose intersection is empty, stops that cut every option short).

Emptiness questions are answered exactly by running llguidance over a 256-token
byte vocabulary (llguidance is a native library without torch).
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache

from ..problems import Problem
from ..suggest import did_you_mean
from .formats import ENFORCE, MODES, lower_schema_text, refusal, unenforceable_formats
from .jsonfix import xgrammar_ignored
from .lower import (CLOSING_PRIORITY, CLOSING_PRIORITY_IN_STRING, json_string_state, OUTLINES_ENFORCED, XGRAMMAR_ENFORCED, LoweringError, Plan, llguidance_json_options, lower,
                    option_survives_stops, schema_keywords)
from .shapes import split_options, strip_anchors
from .spec import (All, BoolType, Choice, Constraint, FloatType, Grammar, IntType, JsonSchema, MaxChars, MaxTokens,
                   Regex, Stop, flatten)

# A constraint's problems are the structured problems every validator returns.
ConstraintProblem = Problem


# ------------------------------------------------------------------ byte-level llguidance oracle
@lru_cache(maxsize=1)
def _byte_tokenizer():
    import llguidance

    class _Bytes:
        eos_token_id = 256
        bos_token_id = None
        special_token_ids = [256]
        tokens = [bytes([i]) for i in range(256)] + [b"\xff<eos>"]

        def __call__(self, data):
            return list(data if isinstance(data, bytes) else data.encode("utf-8"))

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()), slices=[])


def _grammar(plan: Plan) -> str:
    import llguidance

    if plan.kind == "json":
        from .jsonfix import llguidance_schema_grammar

        return llguidance_schema_grammar(plan.text, llguidance_json_options())[0]
    if plan.kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(plan.text)
    if plan.options is not None:
        return llguidance.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(o, ensure_ascii=False) for o in plan.options))
    return llguidance.LLMatcher.grammar_from_regex(plan.text)


def backend_error(plan: Plan) -> str:
    """llguidance's complaint about a plan ("" when it enforces it)."""
    import llguidance

    if plan.kind == "json":
        from .jsonfix import llguidance_schema_grammar

        return llguidance_schema_grammar(plan.text, llguidance_json_options())[1].strip()
    try:
        msg = llguidance.LLMatcher.validate_grammar(_grammar(plan))
    except Exception as e:
        return str(e)
    return msg.strip()


def _matcher(plan: Plan):
    import llguidance

    return llguidance.LLMatcher(_byte_tokenizer(), _grammar(plan), log_level=0)


def plan_is_empty(plan: Plan) -> bool:
    """True when no text at all satisfies the plan's shape."""
    m = _matcher(plan)
    if m.is_error():
        return False  # reported elsewhere
    if m.is_accepting():
        return False
    mask = m.compute_bitmask()
    return not any(mask[:32])


def shortest_value(plan: Plan, limit: int = 512) -> str | None:
    """A short value of the plan's shape (greedy, as the runtime's closing walk)."""
    m = _matcher(plan)
    if m.is_error():
        return None
    out = bytearray()
    while len(out) < limit:
        if m.is_accepting():
            return out.decode("utf-8", errors="replace")
        ff = m.compute_ff_bytes()
        if ff:
            if not m.consume_tokens(list(ff)):
                return None
            out += ff
            continue
        mask = m.compute_bitmask()
        allowed = [b for b in range(256) if (mask[b // 8] >> (b % 8)) & 1]
        if not allowed:
            return None
        order = CLOSING_PRIORITY
        if plan.kind == "json" and json_string_state(bytes(out))[0]:
            order = CLOSING_PRIORITY_IN_STRING
        pick = next((b for b in order if b in allowed), allowed[0])
        if not m.consume_token(pick):
            return None
        out.append(pick)
    return None


# ------------------------------------------------------------------ per shape
_UNSUPPORTED_RE = {
    "GROUPREF": "backreferences", "GROUPREF_EXISTS": "conditional groups (?(1)...)",
    "ASSERT": "lookahead/lookbehind", "ASSERT_NOT": "negative lookahead/lookbehind",
    "ATOMIC_GROUP": "atomic groups", "POSSESSIVE_REPEAT": "possessive repeats",
}
_ANCHORS = {"AT_BOUNDARY": r"\b", "AT_NON_BOUNDARY": r"\B", "AT_BEGINNING": "^", "AT_END": "$",
            "AT_BEGINNING_STRING": r"\A", "AT_END_STRING": r"\Z", "AT_BEGINNING_LINE": "^", "AT_END_LINE": "$"}


def _regex_features(pattern: str) -> list[str]:
    try:
        import re._parser as sre_parse  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - Python < 3.11
        import sre_parse  # type: ignore[no-redef]
    found: list[str] = []

    def walk(items) -> None:
        for op, av in items:
            name = str(op)
            if name in _UNSUPPORTED_RE:
                found.append(_UNSUPPORTED_RE[name])
            if name == "AT":
                found.append(f"the anchor {_ANCHORS.get(str(av), str(av))} inside the pattern")
            if isinstance(av, (list, tuple)):
                for x in av:
                    if isinstance(x, sre_parse.SubPattern):
                        walk(x)
                    elif isinstance(x, (list, tuple)):
                        for y in x:
                            if isinstance(y, sre_parse.SubPattern):
                                walk(y)
            elif isinstance(av, sre_parse.SubPattern):
                walk(av)

    walk(sre_parse.parse(pattern))
    return list(dict.fromkeys(found))


def check_regex(pattern: str) -> list[ConstraintProblem]:
    try:
        re.compile(pattern)
    except re.error as e:
        return [ConstraintProblem(f"invalid regex: {e}", "regexes use Python syntax; escape special characters "
                                  "with a backslash", code="bad-regex")]
    body = strip_anchors(pattern)
    feats = _regex_features(body)
    if feats:
        return [ConstraintProblem(f"regex uses {', '.join(feats)}, which token masks cannot enforce",
                                  "rewrite it without them (e.g. spell out the alternatives)",
                                  code="unsupported-regex")]
    err = backend_error(Plan("regex", body))
    if err:
        return [ConstraintProblem(f"regex not supported by the constraint engine: {_first_line(err)}",
                                  code="unsupported-regex")]
    if plan_is_empty(Plan("regex", body)):
        return [ConstraintProblem("regex can match nothing: no value could ever be generated",
                                  code="unsatisfiable")]
    return []


def _first_line(msg: str) -> str:
    lines = [ln for ln in msg.strip().splitlines() if ln.strip()]
    if not lines:
        return msg
    if lines[0].startswith("at ") and len(lines) > 1 and "regex parse error" in lines[0] + lines[1]:
        tail = [ln for ln in lines if ln.startswith("error:")]
        return tail[0][len("error:"):].strip() if tail else lines[0]
    tail = [ln for ln in lines if ln.startswith("error:")]
    return tail[0][len("error:"):].strip() if tail else lines[0]


def check_schema(text: str, formats: str = ENFORCE) -> list[ConstraintProblem]:
    """Problems of a JSON schema hole; `formats` is JsonSchema.formats ("enforce" refuses
    each format lmlang cannot enforce, at its JSON path; "annotate" lets it pass unchecked)."""
    if formats not in MODES:
        return [ConstraintProblem(f"formats={formats!r} is not an option", did_you_mean(formats, MODES),
                                  code="bad-schema")]
    try:
        schema = json.loads(text)
    except ValueError as e:
        return [ConstraintProblem(f"JSON schema is not valid JSON: {e}", code="bad-schema")]
    if not isinstance(schema, (dict, bool)):
        return [ConstraintProblem("a JSON schema must be an object (or true/false)", code="bad-schema")]
    try:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except Exception as e:  # jsonschema.SchemaError
        path = "/".join(str(p) for p in getattr(e, "path", []) or [])
        where = f" at /{path}" if path else ""
        return [ConstraintProblem(f"invalid JSON schema{where}: {getattr(e, 'message', str(e))}", code="bad-schema")]
    if schema is False:
        return [ConstraintProblem("the JSON schema `false` allows no value", code="unsatisfiable")]
    if formats == ENFORCE:
        refused = [refusal(where, name) for where, name in unenforceable_formats(text)]
        if refused:
            return [ConstraintProblem(msg, hint, code="unsupported-format") for msg, hint in refused]
    lowered = lower_schema_text(text, formats)
    if lowered != text:
        text, schema = lowered, json.loads(lowered)
    err = backend_error(Plan("json", text))
    if err:
        keywords = schema_keywords(schema) if isinstance(schema, dict) else set()
        xgrammar_takes = keywords <= XGRAMMAR_ENFORCED and not xgrammar_ignored(schema)
        if not (xgrammar_takes or keywords <= OUTLINES_ENFORCED):
            m = re.search(r"Unimplemented keys: \[(.*?)\]", err)
            if m:
                names = [k.strip().strip('"') for k in m.group(1).split(",")]
                return [ConstraintProblem(
                    f"JSON schema keyword{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)} "
                    "cannot be enforced while decoding", "drop or rewrite the keyword; lmlang never checks a value "
                    "after the fact", code="unsupported-schema")]
            return [ConstraintProblem(f"JSON schema cannot be enforced while decoding: {_first_line(err)}",
                                      code="unsupported-schema")]
        return []
    if plan_is_empty(Plan("json", text)):
        return [ConstraintProblem("the JSON schema allows no value", code="unsatisfiable")]
    return []


def check_grammar(text: str) -> list[ConstraintProblem]:
    try:
        import lark

        lark.Lark(text, start="start", parser="earley")
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [ConstraintProblem(f"invalid Lark grammar: {msg}", "the grammar needs a `start` rule",
                                  code="bad-grammar")]
    err = backend_error(Plan("lark", text))
    if err:
        return [ConstraintProblem(f"grammar cannot be enforced while decoding: {_first_line(err)}",
                                  code="unsupported-grammar")]
    if plan_is_empty(Plan("lark", text)):
        return [ConstraintProblem("the grammar derives no text", code="unsatisfiable")]
    return []


# ------------------------------------------------------------------ disk cache of results
# Checking a regex, schema or grammar imports jsonschema and llguidance and
# compiles the grammar (60-120 ms in a fresh process), while the answer depends
# only on the constraint and on the code that judges it. `lmlang check` runs
# in a new process each time, so answers are kept on disk, keyed by the
# constraint's repr and by a fingerprint of that code: lmlang's constraint
# modules and the installed llguidance, jsonschema and lark (file size and
# mtime, which a reinstall or an edit changes; reading package metadata would
# cost more than the check itself).
_EXPENSIVE = (Regex, JsonSchema, Grammar)
_JUDGES = ("check.py", "lower.py", "shapes.py", "jsonfix.py", "formats.py", "spec.py")


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(here, name) for name in _JUDGES]
    for lib in ("llguidance", "jsonschema", "lark"):
        spec = importlib.util.find_spec(lib)
        files.append(spec.origin if spec and spec.origin else lib)
    parts = []
    for f in files:
        try:
            st = os.stat(f)
            parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{f}:missing")
    return "\n".join(parts)


def _cache_path(c: Constraint):
    import hashlib

    from ..home import cache_dir

    digest = hashlib.sha256(f"{_code_fingerprint()}\n{c!r}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return cache_dir("check") / f"{digest}.json"


def check_constraint_cached(c: Constraint | None) -> list[ConstraintProblem]:
    """`check_constraint`, answered from the disk cache when this exact
    constraint was judged before by the same code (a cache that cannot be read
    or written is simply bypassed)."""
    if not any(isinstance(p, _EXPENSIVE) for p in flatten(c)):
        return check_constraint(c)
    try:
        path = _cache_path(c)
    except OSError:
        return check_constraint(c)
    try:
        return [ConstraintProblem(**d) for d in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        pass
    problems = check_constraint(c)
    try:
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps([p.__dict__ for p in problems]), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return problems


# ------------------------------------------------------------------ whole constraint
def check_constraint(c: Constraint | None) -> list[ConstraintProblem]:
    problems: list[ConstraintProblem] = []
    parts = flatten(c)
    stops = tuple(p for p in parts if isinstance(p, Stop))
    shapes = [p for p in parts if not isinstance(p, (Stop, MaxTokens, MaxChars, All))]
    for p in parts:
        if isinstance(p, Stop) and not p.text:
            problems.append(ConstraintProblem("empty stop string: generation would end before it starts",
                                              code="unsatisfiable"))
        if isinstance(p, MaxTokens) and p.n < 1:
            problems.append(ConstraintProblem(f"tokens(x) <= {p.n} leaves no room for any token",
                                              code="unsatisfiable"))
        if isinstance(p, MaxChars) and p.n < 0:
            problems.append(ConstraintProblem(f"len(x) <= {p.n} is impossible", code="unsatisfiable"))
        if isinstance(p, IntType):
            lo, hi = getattr(p, "lo", None), getattr(p, "hi", None)
            if lo is not None and hi is not None and lo > hi:
                problems.append(ConstraintProblem(f"empty integer range {lo}..{hi}", code="unsatisfiable"))
    for s in shapes:
        if isinstance(s, Regex):
            problems += check_regex(s.pattern)
        elif isinstance(s, JsonSchema):
            problems += check_schema(s.schema, s.formats)
        elif isinstance(s, Grammar):
            problems += check_grammar(s.lark)
        elif isinstance(s, Choice):
            problems += _check_choice(s, shapes, stops, parts)
    if problems:
        return problems
    max_chars = min((p.n for p in parts if isinstance(p, MaxChars)), default=None)
    try:
        plan = lower(c)
    except LoweringError as e:
        return [ConstraintProblem(str(e), "use one shape per hole (`in`, `matches`, `is ...`)", code="conflict")]
    if plan.options is not None or not plan.has_shape:
        return problems
    if len(shapes) > 1 or (plan.kind == "lark" and plan.source.endswith("&len")):
        if plan_is_empty(plan):
            what = " and ".join(_describe(s) for s in shapes)
            if max_chars is not None:
                what += f" within len(x) <= {max_chars}"
            return [ConstraintProblem(f"no value satisfies {what}", code="unsatisfiable")]
    elif max_chars is not None and plan.kind in ("json", "lark"):
        short = shortest_value(plan)
        if short is not None and len(short) > max_chars:
            return [ConstraintProblem(
                f"len(x) <= {max_chars} is shorter than the shortest value the {_describe(shapes[0])} allows "
                f"({short!r}, {len(short)} characters)", code="unsatisfiable")]
    return problems


def _describe(s: Constraint) -> str:
    return {Regex: "regex", IntType: "int", FloatType: "float", BoolType: "bool", JsonSchema: "JSON schema",
            Grammar: "grammar", Choice: "choice"}.get(type(s), type(s).__name__)


def _check_choice(ch: Choice, shapes, stops, parts) -> list[ConstraintProblem]:
    if not ch.options:
        return [ConstraintProblem("empty choice list: no value is possible", code="unsatisfiable")]
    out: list[ConstraintProblem] = []
    seen: set[str] = set()
    dups = sorted({o for o in ch.options if o in seen or seen.add(o)})       # linear: 10k options stay fast
    if dups:
        out.append(ConstraintProblem(f"duplicate options {dups}", severity="warning", code="duplicate-option"))
    options = list(dict.fromkeys(ch.options))
    for other in shapes:
        if other is ch:
            continue
        bad = list(split_options(options, other)[1])
        if bad and len(bad) == len(options):
            return out + [ConstraintProblem(f"no option is a valid {_describe(other)}: {bad[:5]}",
                                            code="unsatisfiable")]
        if bad:
            out.append(ConstraintProblem(f"options {bad[:5]} are not a valid {_describe(other)} and can never be "
                                         "chosen", severity="warning", code="dead-option"))
        bad_set = set(bad)
        options = [o for o in options if o not in bad_set]
    cut = [o for o in options if not option_survives_stops(o, stops)]
    if cut and len(cut) == len(options):
        return out + [ConstraintProblem(f"every option contains a stop string, so none can be completed: {cut[:5]}",
                                        "remove the `stops` clause or the stop text from the options",
                                        code="unsatisfiable")]
    if cut:
        out.append(ConstraintProblem(f"options {cut[:5]} contain a stop string and can never be completed",
                                     severity="warning", code="dead-option"))
    cut_set = set(cut)
    options = [o for o in options if o not in cut_set]
    max_chars = min((p.n for p in parts if isinstance(p, MaxChars)), default=None)
    if max_chars is not None:
        fits = [o for o in options if len(o) <= max_chars]
        if not fits:
            return out + [ConstraintProblem(f"len(x) <= {max_chars} is shorter than every option "
                                            f"(shortest: {min(len(o) for o in options)} characters)",
                                            code="unsatisfiable")]
    return [p for p in out if p.severity == "error"] + [p for p in out if p.severity != "error"]
