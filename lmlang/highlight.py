"""A pygments lexer for lmlang, used by the REPL's highlighting and the docs
(registered as the `lmlang` lexer through the `pygments.lexers` entry point,
so ```lmlang code blocks highlight anywhere pygments runs).

Prompt strings get their own tokens: `{var}` interpolations read as names,
`[hole]` holes as variables, so the shape of a prompt is visible at a glance.
"""
from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, include, words
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String, Text, Whitespace)

from .builtins import BUILTINS as FLOW_BUILTINS

DECLARATIONS = ("input", "model", "adapter", "router", "query", "flow", "use")
KEYWORDS = ("using", "decode", "where", "distribution", "if", "else", "for", "in", "emit", "and", "or", "not",
            "is", "matches", "stops", "at", "before", "lora", "train", "on", "merge", "fuse", "route", "json",
            "grammar", "contains", "server", "vllm")
CONSTANTS = ("true", "false", "default")
ROLES = ("system", "user", "assistant")
TYPES = ("str", "int", "float", "bool", "json", "list", "any")
BUILTINS = ("tokens", *FLOW_BUILTINS)


class LmlangLexer(RegexLexer):
    name = "lmlang"
    aliases = ["lmlang", "lm"]
    filenames = ["*.lm"]
    mimetypes = ["text/x-lmlang"]

    tokens = {
        "root": [
            (r"\s+", Whitespace),
            (r"#.*?$", Comment.Single),
            (words(DECLARATIONS, suffix=r"\b"), Keyword.Declaration),
            (words(ROLES, suffix=r'(?=\s*r?")'), Keyword.Pseudo),
            (words(CONSTANTS, suffix=r"\b"), Keyword.Constant),
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
