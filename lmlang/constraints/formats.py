"""JSON Schema `format` while decoding: which formats lmlang enforces, and how.

llguidance 1.9 enforces some formats itself (`NATIVE`). For the other formats
of the JSON Schema standard (and the OpenAPI format registry's numeric and
binary ones) lmlang writes what the format means as ordinary keywords before
any backend sees the schema: one or more anchored `pattern`s that must all
match (regexes in the subset Python's `re` and llguidance's Rust syntax
share), or numeric bounds. A format it cannot enforce is never dropped
silently: with `formats="enforce"` (the default) the check refuses it, naming
the keyword's JSON path; a script that opts in with `formats="annotate"` gets
it treated as the annotation JSON Schema allows it to be (not checked).

A few formats llguidance knows are written here too, where its regex accepts
strings the format's RFC or Python's checker rejects: `date`, `date-time` and
`time` (February 29 only in leap years, no year 0000, no leap second) and
`hostname` (at most 253 characters). Where the RFC and Python's checkers
differ, lmlang enforces the narrower reading, so a value it lets through
passes both.

Torch-free, backend-free: the checker and the lowering use it.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from .pointer import resolve_local_ref

ENFORCE = "enforce"
ANNOTATE = "annotate"
MODES = (ENFORCE, ANNOTATE)

# Formats llguidance 1.9 enforces itself (its `lookup_format`), except those written below.
NATIVE = frozenset({"duration", "email", "ipv4", "ipv6", "uuid", "uri"})

# Formats lmlang cannot enforce exactly, whatever the instance: llguidance's numeric
# bounds are imprecise beyond 2**53 and fail to build for large float ranges.
# (Every other unknown name is unenforceable too; these are named for the hint.)
INEXACT = frozenset({"int64", "uint64", "float", "double"})

# ------------------------------------------------------------------ regex pieces
# Written in the subset that Python's `re` (jsonschema's `pattern`) and Rust's
# regex syntax (llguidance) read alike: punctuation inside classes is escaped
# (in Rust `&&`, `--`, `~~` and `[` are set operators), no lookaround, no `\d`.
_ALNUM = "A-Za-z0-9"
_UNRESERVED = _ALNUM + r"\-\._\~"
_SUB_DELIMS = r"!\$\&'\(\)\*\+,;="
_HEX = "[0-9A-Fa-f]"
_PCT = f"%{_HEX}{{2}}"
# RFC 3987 ucschar and iprivate
_UCSCHAR = (
    "\\u00A0-\\uD7FF\\uF900-\\uFDCF\\uFDF0-\\uFFEF"
    + "".join(f"\\U{p * 0x10000:08X}-\\U{p * 0x10000 + 0xFFFD:08X}" for p in range(1, 14))
    + "\\U000E1000-\\U000EFFFD"
)
_IPRIVATE = "\\uE000-\\uF8FF\\U000F0000-\\U000FFFFD\\U00100000-\\U0010FFFD"

_DEC_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])"
IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"


def _ipv6() -> str:
    """RFC 3986 IPv6address, all nine forms (ls32 may be an IPv4 address)."""
    h16 = f"{_HEX}{{1,4}}"
    ls32 = f"(?:{h16}:{h16}|{IPV4})"
    forms = [f"(?:{h16}:){{6}}{ls32}", f"::(?:{h16}:){{5}}{ls32}"]
    for before, after in ((0, 4), (1, 3), (2, 2), (3, 1)):
        forms.append(f"(?:(?:{h16}:){{0,{before}}}{h16})?::(?:{h16}:){{{after}}}{ls32}")
    forms.append(f"(?:(?:{h16}:){{0,4}}{h16})?::{ls32}")
    forms.append(f"(?:(?:{h16}:){{0,5}}{h16})?::{h16}")
    forms.append(f"(?:(?:{h16}:){{0,6}}{h16})?::")
    return "(?:" + "|".join(forms) + ")"


def _uri(iri: bool, reference: bool) -> str:
    """RFC 3986 URI / URI-reference, or RFC 3987 IRI / IRI-reference."""
    u = _UNRESERVED + (_UCSCHAR if iri else "")
    pchar = f"(?:[{u}{_SUB_DELIMS}:@]|{_PCT})"
    segment = f"{pchar}*"
    segment_nz = f"{pchar}+"
    segment_nz_nc = f"(?:[{u}{_SUB_DELIMS}@]|{_PCT})+"
    query = f"(?:[{u}{_SUB_DELIMS}:@/\\?{_IPRIVATE if iri else ''}]|{_PCT})*"
    fragment = f"(?:[{u}{_SUB_DELIMS}:@/\\?]|{_PCT})*"
    userinfo = f"(?:[{u}{_SUB_DELIMS}:]|{_PCT})*"
    ip_future = rf"v{_HEX}+\.[{_UNRESERVED}{_SUB_DELIMS}:]+"
    host = rf"(?:\[(?:{_ipv6()}|{ip_future})\]|(?:[{u}{_SUB_DELIMS}]|{_PCT})*)"  # reg-name covers IPv4address
    authority = f"(?:{userinfo}@)?{host}(?::[0-9]*)?"
    abempty = f"(?:/{segment})*"
    absolute = f"/(?:{segment_nz}(?:/{segment})*)?"
    rootless = f"{segment_nz}(?:/{segment})*"
    noscheme = f"{segment_nz_nc}(?:/{segment})*"
    tail = rf"(?:\?{query})?(?:#{fragment})?"
    scheme = r"[A-Za-z][A-Za-z0-9\+\-\.]*"
    absolute_uri = f"{scheme}:(?://{authority}{abempty}|{absolute}|{rootless}|){tail}"
    if not reference:
        return absolute_uri
    return f"(?:{absolute_uri}|(?://{authority}{abempty}|{absolute}|{noscheme}|){tail})"


# RFC 3339, narrowed to what Python's validators also accept: years from 0001,
# February 29 only in leap years, no leap second.
_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
DATE = (
    f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    f"|02-(?:0[1-9]|1[0-9]|2[0-8]))|{_LEAP_YEAR}-02-29)"
)
TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?(?:[zZ]|[\\+\\-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
DATE_TIME = f"{DATE}[tT]{TIME}"


def _label(cls: str, longest: int) -> str:
    """An LDH label over `cls`: 1..longest characters, no hyphen first or last,
    and not hyphens in both the 3rd and 4th position (IDNA 2008 reserves those)."""
    a, ah = f"[{cls}]", f"[{cls}\\-]"
    return f"(?:{a}(?:{ah}?{a})?|{a}{ah}(?:{a}{a}|\\-{a})|{a}{ah}(?:{a}{ah}|\\-{a}){ah}{{0,{longest - 5}}}{a})"


# RFC 1123 host names: labels of letters, digits and inner hyphens, at most 63 each
_HOST_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9\\-]{0,61}[A-Za-z0-9])?"
HOSTNAME = f"{_HOST_LABEL}(?:\\.{_HOST_LABEL})*"
# idn-hostname, a sound subset of IDNA 2008 (Python's `idna.encode`): ASCII
# labels, and labels of lowercase Latin-1 letters (PVALID, NFC, left-to-right)
# of at most 16 characters, whose A-label fits in 63; at most 60 characters in
# all when a label is not ASCII, so that the A-label form fits in 253 (the worst
# case is one-letter labels: "é." is 2 characters, "xn--9ca." 8).
_IDN_LATIN = "a-z0-9\\u00DF-\\u00F6\\u00F8-\\u00FF"
_ASCII_IDN_HOST = f"{_label(_ALNUM, 63)}(?:\\.{_label(_ALNUM, 63)})*"
_IDN_LABEL = f"(?:{_label(_ALNUM, 63)}|{_label(_IDN_LATIN, 16)})"
_IDN_HOST = f"{_IDN_LABEL}(?:\\.{_IDN_LABEL})*"

# email: RFC 5321 Mailbox with a dot-string local part (as llguidance's own);
# idn-email (RFC 6531) adds non-ASCII characters to the local part and domain.
_ATEXT = "A-Za-z0-9!#\\$%\\&'\\*\\+\\-/=\\?\\^_`\\{\\|\\}\\~"
_NON_ASCII = "\\u0080-\\uD7FF\\uE000-\\U0010FFFF"


def _idn_email() -> str:
    at = _ATEXT + _NON_ASCII
    local = f"[{at}]+(?:\\.[{at}]+)*"
    label = f"[{_ALNUM}{_NON_ASCII}](?:[{_ALNUM}{_NON_ASCII}\\-]*[{_ALNUM}{_NON_ASCII}])?"
    return f"{local}@(?:{label}(?:\\.{label})*|\\[{IPV4}\\])"


# RFC 6901 JSON Pointer; relative JSON Pointer (draft-handrews-relative-json-pointer-01),
# its integer narrowed to what Python's checker accepts (no digit after a 0).
JSON_POINTER = "(?:/(?:[^/\\~]|\\~[01])*)*"
RELATIVE_JSON_POINTER = f"(?:0|[1-9]+0?)(?:#|{JSON_POINTER})"


def _uri_template() -> str:
    """RFC 6570 level 4, narrowed to what Python's `uri_template.validate` also
    accepts (prefix lengths of 1-3 digits, variable names without %-escapes)."""
    literal = f"(?:[!#\\$\\&\\(-;=\\?-\\[\\]_a-z\\~{_UCSCHAR}{_IPRIVATE}]|{_PCT})"
    varname = "[A-Za-z0-9_](?:\\.?[A-Za-z0-9_])*"
    varspec = f"{varname}(?::[1-9][0-9]{{0,2}}|\\*)?"
    expression = f"\\{{[\\+#\\./;\\?\\&]?{varspec}(?:,{varspec})*\\}}"
    return f"(?:{literal}|{expression})*"


# regex (ECMA 262; Python's checker runs `re.compile`): a sound subset with groups
# nested at most 4 deep. Literals, `.`, classes with ordered ASCII ranges, escaped
# punctuation and the common escapes, groups, lookaheads (without groups inside),
# anchors, greedy and lazy quantifiers.
_ALNUM_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _printable_except(excluded: str) -> str:
    """A class body of every character from space up, but `excluded` (and surrogates).
    Written positively: llguidance 1.9 lets a class that covers all of \\x00-\\x1f
    (a negated class, say) match the JSON escapes \\\\ and \\" as well."""
    out, start = [], 0x20
    for c in sorted(ord(x) for x in excluded) + [0x7F]:
        if c > start:
            out.append(f"\\x{start:02X}-\\x{c - 1:02X}" if c - 1 > start else f"\\x{start:02X}")
        start = c + 1
    return "".join(out) + "\\x7F-\\uD7FF\\uE000-\\U0010FFFF"


def _class_chars(lo: int, excluded: str) -> str:
    """A class body of the printable ASCII characters from `lo` up, but `excluded`."""
    out: list[list[int]] = []
    for c in range(lo, 0x7F):
        if chr(c) not in excluded:
            if out and out[-1][1] == c - 1:
                out[-1][1] = c
            else:
                out.append([c, c])
    return "".join(f"\\x{a:02X}" if a == b else f"\\x{a:02X}-\\x{b:02X}" for a, b in out)


def _ordered_ranges() -> str:
    """Class ranges X-Y of printable ASCII with X <= Y (`[z-a]` does not compile)."""
    special = "\\[]-"
    return (
        "(?:"
        + "|".join(f"\\x{c:02X}\\-[{_class_chars(c, special)}]" for c in range(0x20, 0x7F) if chr(c) not in special)
        + ")"
    )


def _repeat_bounds() -> str:
    """{n}, {n,} and the {n,m} whose n <= m can be read off the digits."""
    n = "(?:0|[1-9][0-9]{0,3})"
    pairs = ["0,[0-9]{1,4}", "[1-9],[1-9][0-9]{1,3}", "[1-9][0-9],[1-9][0-9]{2,3}", "[1-9][0-9]{2},[1-9][0-9]{3}"]
    pairs += [f"{d},[{d}-9]" for d in range(1, 10)]
    pairs += [f"{d}[0-9],[{d + 1}-9][0-9]" for d in range(1, 9)]
    pairs += [f"{d}{e},{d}[{e}-9]" for d in range(1, 10) for e in range(10)]
    return f"\\{{(?:{n},?|" + "|".join(pairs) + ")\\}"


def _regex_format(depth: int = 4) -> str:
    # escaped ASCII punctuation is the character itself in Python (and in ECMA 262 without the u flag)
    escapes = f"[{_class_chars(0x21, _ALNUM_CHARS)}]|[dDwWsSntrfv]|x[0-9A-Fa-f]{{2}}|u[0-9A-Fa-f]{{4}}"
    escape = f"\\\\(?:{escapes})"
    class_char = _printable_except("\\[]-")
    # a '-' is a literal first, last, or right after a range ([a-z-0-9] is a-z, '-', 0-9)
    class_item = f"(?:[{class_char}]|{escape}|{_ordered_ranges()}\\-?)"
    char_class = f"\\[\\^?(?:\\-{class_item}*\\-?|{class_item}+\\-?)\\]"
    literal = "[" + _printable_except("\\^$.|?*+()[]{}") + "]"
    quantifier = f"(?:[\\*\\+\\?]|{_repeat_bounds()})\\??"
    assertion = "(?:\\^|\\$|\\\\[bB])"
    body = flat = ""
    for level in range(depth + 1):
        # a lookahead holds no group (embedding each level twice would double the regex per level)
        group = f"|\\((?:\\?:)?{body}\\)" if level else ""
        lookahead = f"|\\(\\?[=!]{flat}\\)" if level else ""
        atom = f"(?:{literal}|\\.|{escape}|{char_class}{group})"
        item = f"(?:{atom}(?:{quantifier})?|{assertion}{lookahead})"
        body = f"(?:{item}|\\|)*"  # `|` is one more item: empty alternatives are valid
        flat = flat or body
    return body


def _pattern(p: str) -> dict:
    return {"pattern": f"^(?:{p})$"}


@lru_cache(maxsize=1)
def string_formats() -> dict[str, tuple[dict, ...]]:
    """Format name -> subschemas that together mean it (all must hold; each
    constrains strings only, as a format does). Built once, on first use."""
    return {
        "date": (_pattern(DATE),),
        "date-time": (_pattern(DATE_TIME),),
        "time": (_pattern(TIME),),
        "hostname": ({**_pattern(HOSTNAME), "maxLength": 253},),
        "idn-hostname": (
            {"anyOf": [{**_pattern(_ASCII_IDN_HOST), "maxLength": 253}, {**_pattern(_IDN_HOST), "maxLength": 60}]},
        ),
        "uri-reference": (_pattern(_uri(iri=False, reference=True)),),
        "iri": (_pattern(_uri(iri=True, reference=False)),),
        "iri-reference": (_pattern(_uri(iri=True, reference=True)),),
        "idn-email": (_pattern(_idn_email()),),
        "json-pointer": (_pattern(JSON_POINTER),),
        "relative-json-pointer": (_pattern(RELATIVE_JSON_POINTER),),
        "uri-template": (_pattern(_uri_template()),),
        "regex": (_pattern(_regex_format()),),
        # OpenAPI format registry
        "byte": (_pattern("(?:[A-Za-z0-9\\+/]{4})*(?:[A-Za-z0-9\\+/]{2}==|[A-Za-z0-9\\+/]{3}=)?"),),
        "binary": (),  # any string of octets
        "password": (),  # a hint to hide the value: any string
    }


# OpenAPI format registry: integer formats constrain numbers (only) to whole
# numbers within the range; enforced exactly while the bounds stay within 2**53.
INTEGER_FORMATS = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
}


def meaning(name: str) -> tuple[dict, ...] | None:
    """The subschemas lmlang writes for a format (all must hold), () when llguidance
    enforces it itself or it constrains nothing, None when lmlang cannot enforce it."""
    if name in NATIVE:
        return ()
    found = string_formats().get(name)
    if found is not None:
        return found
    if name in INTEGER_FORMATS:
        lo, hi = INTEGER_FORMATS[name]
        return ({"minimum": lo, "maximum": hi, "multipleOf": 1},)
    return None


def known_formats() -> list[str]:
    return sorted(NATIVE | set(string_formats()) | set(INTEGER_FORMATS))


# ------------------------------------------------------------------ walking a schema
# Keywords whose values are schemas, maps of schemas, or lists of schemas.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
_SCHEMA_ONE = (
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "items",
)
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def subschemas(root):
    """Every subschema (dict) of `root` with its JSON pointer ("#/..."), each once:
    through the keywords that hold schemas and through local `$ref`s (which may
    point anywhere in the document)."""
    seen: set[int] = set()
    todo = [(root, "#")]
    while todo:
        node, where = todo.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        yield node, where
        for key, value in node.items():
            at = f"{where}/{_escape(key)}"
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                todo.extend((v, f"{at}/{_escape(k)}") for k, v in value.items())
            if key in _SCHEMA_ONE and isinstance(value, dict):
                todo.append((value, at))
            if key in _SCHEMA_LISTS and isinstance(value, list):
                todo.extend((v, f"{at}/{i}") for i, v in enumerate(value))
            if key == "$ref" and isinstance(value, str):
                target = resolve_local_ref(root, value)
                if target is not None:
                    todo.append((target, value if value.startswith("#/") else where))


# ------------------------------------------------------------------ lowering
def lower_formats(schema, mode: str = ENFORCE):
    """(schema', unenforceable): a copy of `schema` whose formats lmlang enforces
    are written as keywords llguidance enforces, and the (pointer, name) of
    every format it cannot enforce. Those are removed under "annotate" and left
    in place under "enforce" (where the check refuses them and no backend
    would accept them)."""
    if mode not in MODES:
        raise ValueError(f"formats must be one of {', '.join(MODES)}, not {mode!r}")
    schema = copy.deepcopy(schema)
    unenforceable: list[tuple[str, str]] = []
    for node, where in list(subschemas(schema)):
        name = node.get("format")
        if not isinstance(name, str):
            continue
        extra = meaning(name)
        if extra is None:
            unenforceable.append((f"{where}/format", name))
            if mode == ANNOTATE:
                del node["format"]
            continue
        if name in NATIVE:
            continue
        del node["format"]
        if len(extra) == 1 and set(extra[0]) == {"pattern"} and "pattern" not in node:
            node["pattern"] = extra[0]["pattern"]
        elif extra:
            node["allOf"] = (node["allOf"] if isinstance(node.get("allOf"), list) else []) + list(extra)
    return schema, unenforceable


def _may_have_format(text: str) -> bool:
    """Cheap test before parsing: a key "format" (possibly \\u-escaped) may be in the text."""
    return '"format"' in text or "\\u" in text


@lru_cache(maxsize=32)
def lower_schema_text(text: str, mode: str = ENFORCE) -> str:
    """The schema text every backend gets: `lower_formats` applied (the text
    itself when the schema has no format keyword)."""
    if not _may_have_format(text):
        return text
    try:
        schema = json.loads(text)
    except ValueError:
        return text  # the check reports it
    lowered, _ = lower_formats(schema, mode)
    if lowered == schema:
        return text
    return json.dumps(lowered, ensure_ascii=False)  # key order kept: llguidance emits properties in it


def unenforceable_formats(text: str) -> list[tuple[str, str]]:
    """(JSON pointer of the keyword, format name) for each format lmlang cannot enforce."""
    if not _may_have_format(text):
        return []
    try:
        schema = json.loads(text)
    except ValueError:
        return []
    return lower_formats(schema, ENFORCE)[1]


def refusal(where: str, name: str) -> tuple[str, str]:
    """(message, hint) for a format lmlang cannot enforce."""
    from ..suggest import did_you_mean

    message = f"{where}: format {name!r} cannot be enforced while decoding"
    if name in INEXACT:
        why = "its range cannot be enforced exactly"
    else:
        close = did_you_mean(name, known_formats())
        why = "lmlang does not know this format" + (f" ({close})" if close else "")
    hint = (
        f"{why}; lmlang enforces every JSON Schema format and OpenAPI's byte, binary, password, int8-int32 "
        "and uint8-uint32. To treat the formats it cannot enforce as annotations (not checked), write "
        "`is json(formats: \"annotate\") ...`"
    )
    return message, hint


__all__ = [
    "ENFORCE",
    "ANNOTATE",
    "MODES",
    "NATIVE",
    "meaning",
    "known_formats",
    "subschemas",
    "lower_formats",
    "lower_schema_text",
    "unenforceable_formats",
    "refusal",
]
