"""The LALR parser's tables on disk, as JSON: what keeps `lmlang check` fast.

Building the tables from the grammar costs more than parsing a script, so
the built parser is cached (cache_dir("parser")). Lark's own `cache=` option
pickles the parser, and unpickling a planted file runs its code; here the
tables go through Lark's plain-data serialization (`memo_serialize`, the
form its standalone generator prints) into JSON, behind a sha256
(lmlang/cachefile.py), and come back through `Lark._load_from_dict`, which
only instantiates Lark's own grammar classes by name.

What a forged entry can still do is bounded: the parser options are never
read from the file (the loader supplies them), so an entry can only describe
other tables and terminals, and any entry that fails to load is rebuilt.

JSON has no integer keys or tuples, and the parse table is most of the data,
so the table is stored compactly (one flat integer list per state) and the
rest is checked at save time: an entry is written only if loading it back
reproduces the parser's own serialization exactly (a future Lark that
serializes differently simply runs uncached).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import cachefile

KIND = "lark-lalr"
FORMAT = 1  # bump when the stored layout changes
OPTIONS = dict(parser="lalr", lexer="contextual", priority="normal", propagate_positions=True, maybe_placeholders=True)


def load_parser(grammar: str):
    """The LALR parser for `grammar`: from the cache when a valid entry is
    there, else built (and cached for the next process)."""
    import lark

    path = _cache_path(grammar, lark.__version__)
    if path is not None:
        body = cachefile.read(path, KIND)
        if body is not None:
            try:
                return _from_body(body)
            except Exception:  # a well-hashed entry this Lark cannot load: rebuild it
                pass
    parser = lark.Lark(grammar, **OPTIONS)
    if path is not None:
        body = _to_body(parser)
        if body is not None:
            cachefile.write(path, KIND, body)
    return parser


def _cache_path(grammar: str, lark_version: str) -> Path | None:
    from .home import cache_dir

    try:
        folder = cache_dir("parser")
    except OSError:
        return None
    key = f"{FORMAT}|{lark_version}|{sorted(OPTIONS.items())}|{grammar}"
    return folder / f"lalr-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:24]}.json"


def _serialized(parser) -> tuple[dict, dict]:
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    return parser.memo_serialize([TerminalDef, Rule])


def _to_body(parser) -> bytes | None:
    """The parser as JSON bytes; None when this Lark's serialization has a
    shape the compact form does not cover (then nothing is cached)."""
    try:
        data, memo = _serialized(parser)
        table = data["parser"]["parser"]
        if list(memo) != list(range(len(memo))):
            return None
        stored = {
            "memo": [memo[i] for i in range(len(memo))],
            "rules": data["rules"],
            "lexer_conf": data["parser"]["lexer_conf"],
            "parser_conf": data["parser"]["parser_conf"],
            "frontend_type": data["parser"]["__type__"],
            "type": data["__type__"],
            "tokens": [[int(k), v] for k, v in table["tokens"].items()],
            "states": [[int(s), _flat_actions(actions)] for s, actions in table["states"].items()],
            "start_states": table["start_states"],
            "end_states": table["end_states"],
        }
        body = json.dumps(stored, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        if _canonical(_serialized(_from_body(body))) != _canonical((data, memo)):
            return None
        return body
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _canonical(x) -> str:
    """Serialized parser data as comparable text (tuples and lists alike)."""
    return json.dumps(x, sort_keys=True, default=repr)


def _flat_actions(actions: dict) -> list[int]:
    """{token: (0, state) | (1, {'@': rule})} -> [token, 0, state, token, 1, rule, ...]."""
    out: list[int] = []
    for token, (action, arg) in actions.items():
        if action == 1:
            arg = arg["@"]
        if not all(type(x) is int for x in (token, action, arg)):
            raise TypeError("unexpected parse table entry")
        out += (token, action, arg)
    return out


def _from_body(body: bytes):
    import lark
    from lark.lark import LarkOptions

    d: dict[str, Any] = json.loads(body)
    states = {}
    for s, flat in d["states"]:
        states[s] = {
            flat[i]: ((1, {"@": flat[i + 2]}) if flat[i + 1] == 1 else (0, flat[i + 2])) for i in range(0, len(flat), 3)
        }
    data = {
        "parser": {
            "lexer_conf": d["lexer_conf"],
            "parser_conf": d["parser_conf"],
            "__type__": d["frontend_type"],
            "parser": {
                "tokens": {k: v for k, v in d["tokens"]},
                "states": states,
                "start_states": d["start_states"],
                "end_states": d["end_states"],
            },
        },
        "rules": d["rules"],
        # Never from the file: the options decide how the tables are used.
        "options": LarkOptions(dict(OPTIONS)).serialize(),
        "__type__": d["type"],
    }
    memo = dict(enumerate(d["memo"]))
    return lark.Lark._load_from_dict(data, memo)
