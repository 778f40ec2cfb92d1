"""A pygments lexer for lmlang, used by the REPL's highlighting and the docs
(registered as the `lmlang` lexer through the `pygments.lexers` entry point,
so ```lmlang code blocks highlight anywhere pygments runs).

Prompt strings get their own tokens: `{var}` interpolations read as names,
`[hole]` holes as variables, so the shape of a prompt is visible at a glance.
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, include, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text, Whitespace

from .builtins import BUILTINS as FLOW_BUILTINS
from .constraints.kinds import KEYWORDS as CONSTRAINT_KEYWORDS
from .models.sources import SOURCE_KINDS
from .router_kinds import ROUTER_KINDS

DECLARATIONS = ("input", "model", "adapter", "router", "query", "flow", "def", "use", "data", "eval", "export")
# Keywords come from the tables that define them (constraint kinds, model
# sources written with a keyword), so a new kind highlights without an edit here.
_CORE_KEYWORDS = (
    "using",
    "decode",
    "guard",  # second wave: `guard leak(...)` on a query
    "where",
    "distribution",
    "if",
    "else",
    "for",
    "in",
    "emit",
    "while",
    "max",
    "break",
    "return",
    "and",
    "or",
    "not",
    "lora",
    "train",
    "on",
    "merge",
    "compress",  # adapter NAME = compress ADAPTER { ... } (issue #17)
    "fuse",
    "route",
    "json",
    "contains",
    "select",  # data NAME = select K from POOL like TARGET by METHOD; export NAME to "dir"
    "generate",  # data NAME = generate using MODEL from DATA { ... }
    "from",
    "like",
    "by",
    "to",
)
CONSTANTS = ("true", "false", "default")
ROLES = ("system", "user", "assistant")
TYPES = ("str", "int", "float", "bool", "json", "list", "any")
BUILTINS = ("tokens", *FLOW_BUILTINS)
KEYWORDS = tuple(
    w
    for w in dict.fromkeys(
        (*_CORE_KEYWORDS, *CONSTRAINT_KEYWORDS, *(k.keyword for k in SOURCE_KINDS.values() if k.keyword))
    )
    if w not in BUILTINS
)
ROUTER_KINDS_WORDS = tuple(ROUTER_KINDS)  # `route embedding { ... }`


class LmlangLexer(RegexLexer):
    name = "lmlang"  # type: ignore[assignment]  # pygments' untyped Lexer.name = None reads as type None
    aliases = ["lmlang", "lm"]
    filenames = ["*.lm"]
    mimetypes = ["text/x-lmlang"]

    tokens = {
        "root": [
            (r"\s+", Whitespace),
            (r"#.*?$", Comment.Single),
            (words(DECLARATIONS, suffix=r"\b"), Keyword.Declaration),
            (words(ROLES, suffix=r'(?=\s*(r?"|\{))'), Keyword.Pseudo),  # `assistant "..."`, `assistant { ... }`
            (words(CONSTANTS, suffix=r"\b"), Keyword.Constant),
            (r"(route)(\s+)(" + "|".join(ROUTER_KINDS_WORDS) + r")\b", bygroups(Keyword, Whitespace, Name.Builtin)),
            (words(KEYWORDS, suffix=r"\b"), Keyword),
            (r'r"""', String.Regex, "rlong"),
            (r'"""', String.Double, "long"),
            (r'r"', String.Regex, "rstring"),
            (r'"', String.Double, "string"),
            (r"\d+(\.\d+)?([eE][-+]?\d+)?", Number),
            (r"\.\.", Operator),
            (r"(==|!=|<=|>=|<|>|\+|-|\*|/|%|=|\?|\|)", Operator),
            (r"[{}()\[\],:.]", Punctuation),
            (r"([A-Za-z_]\w*)(\s*)(\()", bygroups(Name.Function, Whitespace, Punctuation)),
            (words(TYPES, suffix=r"\b"), Keyword.Type),
            (r"[A-Za-z_]\w*", Name),
            (r".", Text),
        ],
        "prompt": [
            (r'\{call\((?:[^}\\]|\\.)*\)\}', Name.Function),  # a tool call: {call("calc", expr)}
            (r"\\.", String.Escape),
            (r"\{[A-Za-z_][\w.]*\}", String.Interpol),
            (r"\[[A-Za-z_]\w*\]", Name.Variable),
        ],
        "string": [
            include("prompt"),
            (r'"', String.Double, "#pop"),
            (r'[^"\\{}\[\]]+', String.Double),
            (r"[{}\[\]]", String.Double),
        ],
        "long": [
            include("prompt"),
            (r'"""', String.Double, "#pop"),
            (r'[^"\\{}\[\]]+', String.Double),
            (r'["{}\[\]]', String.Double),
        ],
        "rstring": [
            (r"\\.", String.Regex),
            (r'"', String.Regex, "#pop"),
            (r'[^"\\]+', String.Regex),
        ],
        "rlong": [
            (r'"""', String.Regex, "#pop"),
            (r'[^"]+|"', String.Regex),
        ],
    }
