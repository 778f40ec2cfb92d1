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
from collections import Counter
from functools import lru_cache

from ..problems import Problem
from ..suggest import did_you_mean
from .closed import closed_schema_text
from .formats import ENFORCE, MODES, lower_schema_text, refusal, unenforceable_formats
from .jsonfix import xgrammar_ignored
from .lower import (
    CLOSING_PRIORITY,
    CLOSING_PRIORITY_IN_STRING,
    OUTLINES_ENFORCED,
    XGRAMMAR_ENFORCED,
    LoweringError,
    Plan,
    choice_lark,
    json_string_state,
    llguidance_json_options,
    lower,
    option_survives_stops,
    schema_keywords,
    with_stops_folded,
)
from .shapes import int_bounds, int_range, split_options, strip_anchors
from .kinds import kind_of
from .pointer import resolve_local_ref
from .runtime_lists import has_runtime_list
from .kinds import split as split_by_role
from .spec import (
    AnyOf,
    BoolType,
    Choice,
    Constraint,
    FloatType,
    Grammar,
    IntType,
    JsonSchema,
    MaxChars,
    MaxTokens,
    NotIn,
    Regex,
    Stop,
    flatten,
)

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
        return llguidance.LLMatcher.grammar_from_lark(choice_lark(plan.options))
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
    "GROUPREF": "backreferences",
    "GROUPREF_EXISTS": "conditional groups (?(1)...)",
    "ASSERT": "lookahead/lookbehind",
    "ASSERT_NOT": "negative lookahead/lookbehind",
    "ATOMIC_GROUP": "atomic groups",
    "POSSESSIVE_REPEAT": "possessive repeats",
}
_ANCHORS = {
    "AT_BOUNDARY": r"\b",
    "AT_NON_BOUNDARY": r"\B",
    "AT_BEGINNING": "^",
    "AT_END": "$",
    "AT_BEGINNING_STRING": r"\A",
    "AT_END_STRING": r"\Z",
    "AT_BEGINNING_LINE": "^",
    "AT_END_LINE": "$",
}


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
        return [
            ConstraintProblem(
                f"invalid regex: {e}",
                "regexes use Python syntax; escape special characters with a backslash",
                code="bad-regex",
            )
        ]
    body = strip_anchors(pattern)
    feats = _regex_features(body)
    if feats:
        return [
            ConstraintProblem(
                f"regex uses {', '.join(feats)}, which token masks cannot enforce",
                "rewrite it without them (e.g. spell out the alternatives)",
                code="unsupported-regex",
            )
        ]
    err = backend_error(Plan("regex", body))
    if err:
        return [
            ConstraintProblem(
                f"regex not supported by the constraint engine: {_first_line(err)}", code="unsupported-regex"
            )
        ]
    if plan_is_empty(Plan("regex", body)):
        return [ConstraintProblem("regex can match nothing: no value could ever be generated", code="unsatisfiable")]
    return []


def _first_line(msg: str) -> str:
    lines = [ln for ln in msg.strip().splitlines() if ln.strip()]
    if not lines:
        return msg
    if lines[0].startswith("at ") and len(lines) > 1 and "regex parse error" in lines[0] + lines[1]:
        tail = [ln for ln in lines if ln.startswith("error:")]
        return tail[0][len("error:") :].strip() if tail else lines[0]
    tail = [ln for ln in lines if ln.startswith("error:")]
    return tail[0][len("error:") :].strip() if tail else lines[0]


def check_schema(text: str, formats: str = ENFORCE) -> list[ConstraintProblem]:
    """Problems of a JSON schema hole; `formats` is JsonSchema.formats ("enforce" refuses
    each format lmlang cannot enforce, at its JSON path; "annotate" lets it pass unchecked)."""
    if formats not in MODES:
        return [
            ConstraintProblem(f"formats={formats!r} is not an option", did_you_mean(formats, MODES), code="bad-schema")
        ]
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
    lowered = closed_schema_text(lower_schema_text(text, formats))
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
                return [
                    ConstraintProblem(
                        f"JSON schema keyword{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)} "
                        "cannot be enforced while decoding",
                        "drop or rewrite the keyword; lmlang never checks a value after the fact",
                        code="unsupported-schema",
                    )
                ]
            return [
                ConstraintProblem(
                    f"JSON schema cannot be enforced while decoding: {_first_line(err)}", code="unsupported-schema"
                )
            ]
        return []
    if plan_is_empty(Plan("json", text)):
        return [ConstraintProblem("the JSON schema allows no value", code="unsatisfiable")]
    if isinstance(schema, dict) and not schema_has_finite_value(schema):
        return [
            ConstraintProblem(
                "the JSON schema allows no finite value: a required property (or array item) "
                "leads back to the object it is in, so every value would contain itself",
                "make the recursive property optional, or let it be null",
                code="unsatisfiable",
            )
        ]
    return []


def schema_has_finite_value(root: dict) -> bool:
    """False only when no finite JSON value can satisfy the schema: every
    type it allows needs a required property or a minimum of array items
    whose schema (through local `$ref`s) needs the same again. Anything it
    cannot judge counts as satisfiable (the backends and the runtime's
    budget check catch the rest). The least fixpoint over `$ref` targets."""
    productive: set[str] = set()

    def ok(node, depth: int = 0) -> bool:
        if node is False:
            return False
        if not isinstance(node, dict) or depth > 64:
            return True
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#") and ref not in productive:
            return False
        if "const" in node or ("enum" in node and node["enum"]):
            return True
        all_of = node.get("allOf")
        if isinstance(all_of, list) and not all(ok(s, depth + 1) for s in all_of):
            return False
        for key in ("anyOf", "oneOf"):
            branches = node.get(key)
            if isinstance(branches, list) and branches and not any(ok(s, depth + 1) for s in branches):
                return False
        types = node.get("type")
        types = [types] if isinstance(types, str) else types if isinstance(types, list) else None
        if types is None or any(t not in ("object", "array") for t in types):
            return True
        return any(_object_ok(node, ok, depth) if t == "object" else _array_ok(node, ok, depth) for t in types)

    refs = set()
    for node in _dicts(root):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            refs.add(ref)
    changed = True
    while changed:
        changed = False
        for ref in refs - productive:
            if ok(_resolve_ref(root, ref)):
                productive.add(ref)
                changed = True
    return ok(root)


def _object_ok(node: dict, ok, depth: int) -> bool:
    props = node["properties"] if isinstance(node.get("properties"), dict) else {}
    required = node["required"] if isinstance(node.get("required"), list) else []
    for name in required:
        if name in props:
            sub = props[name]
        elif node.get("patternProperties"):
            continue  # a pattern may cover it: not judged
        else:
            sub = node.get("additionalProperties", True)
        if not ok(sub, depth + 1):
            return False
    return True


def _array_ok(node: dict, ok, depth: int) -> bool:
    n = node.get("minItems", 0)
    n = n if isinstance(n, int) else 0
    prefix = node["prefixItems"] if isinstance(node.get("prefixItems"), list) else []
    if any(not ok(s, depth + 1) for s in prefix[:n]):
        return False
    items = node.get("items", True)
    if n > len(prefix) and isinstance(items, (dict, bool)) and not ok(items, depth + 1):
        return False
    if "contains" in node and node.get("minContains", 1) and not ok(node["contains"], depth + 1):
        return False
    return True


def _dicts(root):
    """Every dict in a JSON document (iteratively: schemas may be deep)."""
    todo = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            yield node
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)


def _resolve_ref(root, ref: str):
    node = resolve_local_ref(root, ref)
    return True if node is None else node  # unresolvable: not judged here


def check_grammar(text: str) -> list[ConstraintProblem]:
    try:
        shortest = grammar_min_length(text)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [
            ConstraintProblem(f"invalid Lark grammar: {msg}", "the grammar needs a `start` rule", code="bad-grammar")
        ]
    if shortest is None:
        return [
            ConstraintProblem(
                "the grammar derives no finite text: every way to finish `start` needs "
                "`start` again (or another rule that never finishes)",
                "give each recursive rule an alternative without the recursion",
                code="unsatisfiable",
            )
        ]
    err = backend_error(Plan("lark", text))
    if err:
        return [
            ConstraintProblem(
                f"grammar cannot be enforced while decoding: {_first_line(err)}", code="unsupported-grammar"
            )
        ]
    if plan_is_empty(Plan("lark", text)):
        return [ConstraintProblem("the grammar derives no text", code="unsatisfiable")]
    return []


@lru_cache(maxsize=16)
def grammar_min_length(text: str) -> int | None:
    """The length in characters of the grammar's shortest text, as a
    context-free grammar (llguidance's lexer can only rule more out, so no
    value it decodes is shorter); None when `start` derives no finite text.
    Knuth's shortest-derivation algorithm: linear in the grammar's size.
    Raises lark's error for an invalid grammar."""
    import heapq

    import lark

    parser = lark.Lark(text, start="start", parser="earley")
    width = {t.name: t.pattern.min_width for t in parser.terminals}
    base, missing, origin = [], [], []
    uses: dict[str, list[int]] = {}
    for i, rule in enumerate(parser.rules):
        origin.append(rule.origin.name)
        cost, n = 0, 0
        for sym in rule.expansion:
            if sym.is_term:
                cost += width.get(sym.name, 0)
            else:
                n += 1
                uses.setdefault(sym.name, []).append(i)
        base.append(cost)
        missing.append(n)
    heap = [(base[i], origin[i]) for i in range(len(base)) if missing[i] == 0]
    heapq.heapify(heap)
    done: dict[str, int] = {}
    while heap:
        cost, name = heapq.heappop(heap)
        if name in done:
            continue
        done[name] = cost
        for i in uses.get(name, ()):
            base[i] += cost
            missing[i] -= 1
            if missing[i] == 0:
                heapq.heappush(heap, (base[i], origin[i]))
    return done.get("start")


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
_JUDGES = ("check.py", "lower.py", "shapes.py", "jsonfix.py", "formats.py", "spec.py", "closed.py", "linear_regex.py")


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


def cached_verdict(question: str, judge) -> str:
    """judge()'s answer (a string) to `question`, from the same disk cache
    when the same code answered it before: a route rule's regex is judged by
    llguidance (linear_regex.unsupported), and a later check of the script
    then needs no llguidance import."""
    import hashlib

    try:
        from ..home import cache_dir

        digest = hashlib.sha256(f"{_code_fingerprint()}\n{question}".encode("utf-8", "surrogatepass")).hexdigest()
        path = cache_dir("check") / f"v-{digest[:32]}.json"
    except OSError:
        return judge()
    try:
        answer = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(answer, str):
            return answer
    except (OSError, ValueError):
        pass
    answer = judge()
    try:
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(answer), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return answer


def check_constraint_cached(c: Constraint | None) -> list[ConstraintProblem]:
    """`check_constraint`, answered from the disk cache when this exact
    constraint was judged before by the same code (a cache that cannot be read
    or written is simply bypassed)."""
    if not any(isinstance(p, _EXPENSIVE) for p in flatten(c)):
        return check_constraint(c)
    assert c is not None  # flatten(None) is empty: answered above
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
# The check-time judge of each shape kind (constraints/kinds.py names the
# kinds); a shape without one is judged only as part of the whole plan below.
_SHAPE_JUDGES = {
    "regex": lambda s, shapes, stops, parts: check_regex(s.pattern),
    "json": lambda s, shapes, stops, parts: check_schema(s.schema, s.formats),
    "grammar": lambda s, shapes, stops, parts: check_grammar(s.lark),
    "choice": lambda s, shapes, stops, parts: _check_choice(s, shapes, stops, parts),
    # second wave: each regex alternative of an `or` is judged as written
    "or": lambda s, shapes, stops, parts: [
        p for a in s.alternatives if isinstance(a, Regex) for p in check_regex(a.pattern)
    ],
}


def check_constraint(c: Constraint | None) -> list[ConstraintProblem]:
    problems: list[ConstraintProblem] = []
    parts = flatten(c)
    split = split_by_role(c)
    stops, shapes, max_chars = split.stops, list(split.shapes), split.max_chars
    for p in parts:
        if isinstance(p, Stop) and not p.text:
            problems.append(
                ConstraintProblem("empty stop string: generation would end before it starts", code="unsatisfiable")
            )
        if isinstance(p, MaxTokens) and p.n < 1:
            problems.append(ConstraintProblem(f"tokens(x) <= {p.n} leaves no room for any token", code="unsatisfiable"))
        if isinstance(p, MaxChars) and p.n < 0:
            problems.append(ConstraintProblem(f"len(x) <= {p.n} is impossible", code="unsatisfiable"))
        if isinstance(p, IntType):
            lo, hi = int_range(p)
            if lo > hi:
                shown = "..".join("" if b is None else str(b) for b in int_bounds(p))
                problems.append(
                    ConstraintProblem(
                        f"empty integer range {shown}"
                        + ("" if None not in int_bounds(p) else f" (an open end is int64's: {lo}..{hi})"),
                        code="unsatisfiable",
                    )
                )
    if stops and any(isinstance(s, (JsonSchema, Grammar)) for s in shapes):
        # A stop inside a JSON value or a grammar's text would end it before
        # the shape does (and cannot be folded into it exactly, as it is for a
        # regex): the value would break its shape.
        what = "JSON value" if any(isinstance(s, JsonSchema) for s in shapes) else "grammar's text"
        problems.append(
            ConstraintProblem(
                f"a stop string cannot end a {what}: it would cut the value before its shape is complete",
                "drop the stop (the value ends where its shape ends), or write the end into the shape",
                code="conflict",
            )
        )
    for s in shapes:
        judge = _SHAPE_JUDGES.get(kind_of(s).name)
        if judge is not None:
            problems += judge(s, shapes, stops, parts)
    if problems:
        return problems
    if has_runtime_list(c):
        return problems  # its list is known when the query is called (runtime_lists.py judges it then)
    try:
        plan = with_stops_folded(lower(c))
    except LoweringError as e:
        return [ConstraintProblem(str(e), "use one shape per hole (`in`, `matches`, `is ...`)", code="conflict")]
    if plan.options is not None or not plan.has_shape:
        return problems
    folded = plan.kind == "lark" and plan.source != "grammar" and (plan.source.endswith("&len") or plan.stops)
    folded = folded or bool(split.excluded)  # `not in` intersects the shape with a complement
    if len(shapes) > 1 or folded:
        if plan_is_empty(plan):
            what = " and ".join(_describe(s) for s in shapes)
            if max_chars is not None:
                what += f" within len(x) <= {max_chars}"
            for stop in stops:
                what += f" that {'stops at' if stop.include else 'stops before'} {stop.text!r}"
            if split.excluded:
                what = (what or "text") + f" not in {list(split.excluded)[:5]}"
            return [ConstraintProblem(f"no value satisfies {what}", code="unsatisfiable")]
    elif max_chars is not None and plan.kind == "lark":
        shortest = grammar_min_length(plan.text)
        if shortest is not None and shortest > max_chars:
            return [
                ConstraintProblem(
                    f"len(x) <= {max_chars} is shorter than the shortest text the grammar derives "
                    f"({shortest} characters)",
                    code="unsatisfiable",
                )
            ]
    elif max_chars is not None and plan.kind == "json":
        short = shortest_value(plan)
        if short is not None and len(short) > max_chars:
            return [
                ConstraintProblem(
                    f"len(x) <= {max_chars} is shorter than the shortest value the {_describe(shapes[0])} allows "
                    f"({short!r}, {len(short)} characters)",
                    code="unsatisfiable",
                )
            ]
    return problems


def _describe(s: Constraint) -> str:
    return {
        Regex: "regex",
        IntType: "int",
        FloatType: "float",
        BoolType: "bool",
        JsonSchema: "JSON schema",
        Grammar: "grammar",
        Choice: "choice",
        AnyOf: "`or` of shapes",
    }.get(type(s), type(s).__name__)


def _check_choice(ch: Choice, shapes, stops, parts) -> list[ConstraintProblem]:
    if not ch.options:
        return [ConstraintProblem("empty choice list: no value is possible", code="unsatisfiable")]
    out: list[ConstraintProblem] = []
    dups = sorted(o for o, n in Counter(ch.options).items() if n > 1)  # linear: 10k options stay fast
    if dups:
        out.append(ConstraintProblem(f"duplicate options {dups}", severity="warning", code="duplicate-option"))
    options = list(dict.fromkeys(ch.options))
    for other in shapes:
        if other is ch:
            continue
        bad = list(split_options(options, other)[1])
        if bad and len(bad) == len(options):
            return out + [
                ConstraintProblem(f"no option is a valid {_describe(other)}: {bad[:5]}", code="unsatisfiable")
            ]
        if bad:
            out.append(
                ConstraintProblem(
                    f"options {bad[:5]} are not a valid {_describe(other)} and can never be chosen",
                    severity="warning",
                    code="dead-option",
                )
            )
        bad_set = set(bad)
        options = [o for o in options if o not in bad_set]
    cut = [o for o in options if not option_survives_stops(o, stops)]
    if cut and len(cut) == len(options):
        return out + [
            ConstraintProblem(
                f"every option contains a stop string, so none can be completed: {cut[:5]}",
                "remove the `stops` clause or the stop text from the options",
                code="unsatisfiable",
            )
        ]
    if cut:
        out.append(
            ConstraintProblem(
                f"options {cut[:5]} contain a stop string and can never be completed",
                severity="warning",
                code="dead-option",
            )
        )
    cut_set = set(cut)
    options = [o for o in options if o not in cut_set]
    excluded = {o for p in parts if isinstance(p, NotIn) for o in p.options}  # second wave: `not in`
    if excluded and options and all(o in excluded for o in options):
        return out + [ConstraintProblem("`not in` excludes every option of the choice", code="unsatisfiable")]
    options = [o for o in options if o not in excluded]
    max_chars = min((p.n for p in parts if isinstance(p, MaxChars)), default=None)
    if max_chars is not None:
        fits = [o for o in options if len(o) <= max_chars]
        if not fits:
            return out + [
                ConstraintProblem(
                    f"len(x) <= {max_chars} is shorter than every option "
                    f"(shortest: {min(len(o) for o in options)} characters)",
                    code="unsatisfiable",
                )
            ]
    return [p for p in out if p.severity == "error"] + [p for p in out if p.severity != "error"]
