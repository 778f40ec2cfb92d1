"""Source text -> lmlang AST: the entry point and the limits.

The LALR parser (contextual lexer, propagate_positions) is the generated
module lmlang/grammar_parser.py: the tables Lark builds for
grammar/lmlang.lark as Python literals, run by lalr_driver.py, so a `lmlang
check` imports neither lark nor `regex` and builds no parser objects
(`python -m lmlang.grammar_gen` regenerates it). While the grammar file has
changed since (an edit not yet regenerated), lark builds the parser from the
grammar instead, its tables cached as JSON (parser_cache.py), so editing the
grammar never breaks a checkout; tests/frontend/test_grammar_parser.py fails
until it is regenerated.

The tree becomes frozen AST nodes with spans in parser_ast.py (strings and
prompts in parser_strings.py); Lark's exceptions become LmlangSyntaxError
with a span and a hint in parser_errors.py: nothing of Lark escapes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, NamedTuple, get_args

from . import ast as A
from .errors import LmlangSyntaxError
from .parser_ast import MAX_LIST_ITEMS as MAX_LIST_ITEMS  # the literal limits live where literals are read
from .parser_ast import MAX_NUMBER_DIGITS as MAX_NUMBER_DIGITS
from .parser_ast import MAX_STRING_CHARS as MAX_STRING_CHARS
from .parser_ast import make_transformer_class
from .source import Source, brackets, line_col

MAX_NESTING = 64  # deeper brackets are refused before Lark sees them
MAX_EXPR_DEPTH = 100  # deeper expressions (long operator chains too) are refused after parsing
MAX_BLOCK_DEPTH = 64  # deeper statement nesting (an `else if` chain counts one level a branch) too
MAX_SOURCE_BYTES = 4 * 1024 * 1024  # check time stays a few seconds at this size


class _Backend(NamedTuple):
    """One parser and what goes with it: its module's Transformer (ToAst),
    its exception classes, and the disk cache of its lexer's regexes."""

    parser: Any
    to_ast: Any
    exceptions: Any
    lexer_re: Any = None  # grammar_lexer.CachedRe for the generated parser


@lru_cache(maxsize=1)
def _backend() -> _Backend:
    """The parser, built once per process: the generated module while it
    matches the grammar file, else lark's (tables from the JSON cache)."""
    from . import grammar_parser as G
    from .grammar_file import grammar_sha256, grammar_text

    grammar = grammar_text()
    if G.GRAMMAR_SHA256 == grammar_sha256(grammar):
        from .grammar_lexer import CachedRe, cache_path

        lexer_re = CachedRe(cache_path(G.GRAMMAR_SHA256))
        return _Backend(G.Parser(lexer_re), make_transformer_class(G), G, lexer_re)
    import lark

    from .parser_cache import load_parser

    return _Backend(load_parser(grammar), make_transformer_class(lark), lark.exceptions)


def parse(text: str, filename: str = "<string>") -> A.Program:
    if text.startswith("\ufeff"):  # a byte order mark some editors write: not part of the script
        text = text[1:]
    source = Source(text, filename)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise LmlangSyntaxError(
            f"script is larger than {MAX_SOURCE_BYTES // (1024 * 1024)} MB",
            source.span(1, 1),
            "split it into files joined with `use`, and keep long texts in data files",
        ).with_source(source)
    _check_nesting(source)
    backend = _backend()
    errors = backend.exceptions
    try:
        tree = backend.parser.parse(text)
        program = backend.to_ast(source).transform(tree)
        _check_expression_depth(program)
        return program
    except errors.UnexpectedInput as e:
        from .parser_errors import syntax_error

        raise syntax_error(e, source, backend.parser, errors) from None
    except LmlangSyntaxError as e:
        raise e.with_source(source) from None
    except errors.VisitError as e:
        if isinstance(e.orig_exc, LmlangSyntaxError):
            raise e.orig_exc.with_source(source) from None
        if isinstance(e.orig_exc, RecursionError):
            raise _too_deep(source) from None
        raise
    except RecursionError:
        raise _too_deep(source) from None
    finally:
        if backend.lexer_re is not None:
            backend.lexer_re.save()  # the scanners this script met first, for the next process


_ELSE_IF = re.compile(r"\belse\s+if\b")


def _too_deep(source: Source) -> LmlangSyntaxError:
    """Lark's tree walk ran out of stack: brackets are bounded before it
    runs, so this is a chain of thousands of `else if`s. Point at the
    branch past the block-depth limit (or at the start, for anything else)."""
    chain = [m.start() for _, m in zip(range(MAX_BLOCK_DEPTH + 1), _ELSE_IF.finditer(source.text))]
    if len(chain) > MAX_BLOCK_DEPTH:
        line, col = line_col(source.text, chain[-1])
        return LmlangSyntaxError(
            f"statements nested more than {MAX_BLOCK_DEPTH} deep",
            source.span(line, col),
            "an `else if` chain nests one level per branch: look the value up in a list or "
            "a router, or split the chain into several `if` statements",
        ).with_source(source)
    return LmlangSyntaxError(
        "expression nested too deeply", source.span(1, 1), f"keep nesting under {MAX_NESTING} levels"
    ).with_source(source)


def _check_nesting(source: Source) -> None:
    """Refuse pathological nesting up front, so no stage can hit RecursionError.

    Brackets inside strings and comments are skipped; the scan is linear."""
    depth = 0
    for i, ch in brackets(source.text):
        if ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                line, col = line_col(source.text, i)
                raise LmlangSyntaxError(
                    "nesting too deep", source.span(line, col), f"keep brackets nested under {MAX_NESTING} levels"
                ).with_source(source)
        elif ch in ")]}":
            depth = max(depth - 1, 0)


_EXPR_TYPES = get_args(A.Expr)  # isinstance() takes the classes of the Union


def _check_expression_depth(program: A.Program) -> None:
    """Every later stage (checker, compiler, graph hashing and JSON export,
    the flow interpreter) walks statements and expressions recursively;
    bounding their depth here, without recursion, keeps all of them clear of
    RecursionError.

    The flow and the router calls of queries are walked with the AST's
    generic children(); expression depth counts levels below each outermost
    expression, block depth counts nested statements (each `else if` of a
    chain nests one level: it is the else branch of the one before)."""
    stack: list = [(d, 0, None, 0) for d in program.decls if isinstance(d, A.FlowDecl)]
    stack += [
        (a, 1, a, 0)
        for d in program.decls
        if isinstance(d, A.QueryDecl) and isinstance(d.using, A.RouterCall)
        for a in d.using.args
    ]
    while stack:
        node, depth, root, block = stack.pop()
        if depth > MAX_EXPR_DEPTH:
            raise LmlangSyntaxError(
                "expression nested too deeply",
                root.span,
                f"split it into steps; keep expressions under {MAX_EXPR_DEPTH} levels",
            )
        if block > MAX_BLOCK_DEPTH:
            raise LmlangSyntaxError(
                f"statements nested more than {MAX_BLOCK_DEPTH} deep",
                node.span,
                "an `else if` chain nests one level per branch: look the value up in a "
                "list or a router, or split the chain into several `if` statements",
            )
        for child in node.children():
            if not isinstance(child, _EXPR_TYPES):
                stack.append((child, 0, None, block + isinstance(child, (A.If, A.For))))
            elif root is None:
                stack.append((child, 1, child, block))
            else:
                stack.append((child, depth + 1, root, block))
