"""Source text -> lmlang AST.

Lark (LALR, contextual lexer, propagate_positions) builds a parse tree; a
Transformer turns it into frozen AST nodes with spans. Prompt strings are
scanned here too, into Text / Interp / Hole parts, each with its own span, so
later diagnostics can point inside a prompt. Lark's exceptions are translated
into LmlangSyntaxError with a span and a hint: nothing of Lark escapes.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import get_args

from . import ast as A
from .errors import LmlangSyntaxError
from .grammar_file import grammar_text
from .source import Source, Span, brackets, line_col
from .suggest import closest

MAX_NESTING = 64  # deeper brackets are refused before Lark sees them
MAX_EXPR_DEPTH = 100  # deeper expressions (long operator chains too) are refused after parsing
MAX_BLOCK_DEPTH = 64  # deeper statement nesting (an `else if` chain counts one level a branch) too
MAX_SOURCE_BYTES = 4 * 1024 * 1024  # check time stays a few seconds at this size
MAX_STRING_CHARS = 1024 * 1024  # one string literal
MAX_LIST_ITEMS = 10_000  # one list (a choice's options)
MAX_NUMBER_DIGITS = 100  # digits of a number literal (Python refuses int() past 4,300)

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}
PROMPT_ESCAPES = {"{": "{", "}": "}", "[": "[", "]": "]"}

TERMINAL_NAMES = {
    "NAME": "a name",
    "STRING": "a string",
    "LONG_STRING": "a string",
    "NUMBER": "a number",
    "INT": "an integer",
    "ROLE": "a role (system, user, assistant)",
    "ROLE_BLOCK": "a role (system, user, assistant)",
    "LENFN": "tokens() or len()",
    "CMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/' or '%'",
    "SIGN": "'-'",
    "OPTIONAL": "'?'",
    "RANGE_DOTS": "'..'",
    "$END": "the end of the file",
}


@lru_cache(maxsize=1)
def _lark():
    """The LALR parser, built once per process; its tables come from the
    on-disk cache when they can (parser_cache.py: JSON, never pickle)."""
    from .parser_cache import load_parser

    return load_parser(grammar_text())


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
    import lark

    try:
        tree = _lark().parse(text)
        program = _ToAst(source).transform(tree)
        _check_expression_depth(program)
        return program
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, source) from None
    except LmlangSyntaxError as e:
        raise e.with_source(source) from None
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, LmlangSyntaxError):
            raise e.orig_exc.with_source(source) from None
        if isinstance(e.orig_exc, RecursionError):
            raise _too_deep(source) from None
        raise
    except RecursionError:
        raise _too_deep(source) from None


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


def _describe_terminal(name: str) -> str:
    if name in TERMINAL_NAMES:
        return TERMINAL_NAMES[name]
    try:
        term = _lark().get_terminal(name)
        if term.pattern.type == "str":
            return f"'{term.pattern.value}'"
    except KeyError:
        pass
    return name.lower()


def _syntax_error(e, source: Source) -> LmlangSyntaxError:
    import lark

    line = getattr(e, "line", 1) or 1
    col = getattr(e, "column", 1) or 1
    expected = sorted(
        {_describe_terminal(t) for t in (getattr(e, "expected", None) or getattr(e, "allowed", None) or ())}
    )
    unclosed = _unclosed_string(source, line)
    if unclosed is not None:
        return unclosed
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = source.text[e.pos_in_stream] if e.pos_in_stream < len(source.text) else ""  # type: ignore[index, operator]  # lark declares pos_in_stream = None; UnexpectedCharacters sets the int position
        message = f"unexpected character {ch!r}"
        span = source.span(line, col)
    elif isinstance(e, lark.exceptions.UnexpectedEOF) or getattr(getattr(e, "token", None), "type", "") == "$END":
        line = source.line_count()
        if line > 1 and not source.line_text(line):  # a final newline: point at the last text
            line -= 1
        col = len(source.line_text(line)) + 1
        message = "unexpected end of file"
        span = source.span(line, col)
    else:
        tok = e.token
        width = max(len(str(tok)), 1)
        span = Span(
            line,
            col,
            getattr(tok, "end_line", line) or line,
            getattr(tok, "end_column", col + width) or col + width,
            source.filename,
        )
        text = str(tok)
        shown = text if len(text) <= 30 else text[:27] + "..."
        if tok.type in TERMINAL_NAMES and tok.type != "NAME":
            word = (
                TERMINAL_NAMES[tok.type].split(" ", 1)[1]
                if TERMINAL_NAMES[tok.type].startswith(("a ", "an "))
                else TERMINAL_NAMES[tok.type]
            )
            message = f"unexpected {word} {shown}"
        else:
            message = f"unexpected {shown!r}"
    hint = ""
    name = getattr(getattr(e, "token", None), "type", "") == "NAME" and str(e.token)
    keywords = [x.strip("'") for x in expected if x.startswith("'") and x[1:2].isalpha()]
    if name and keywords and closest(name, keywords):
        hint = f"did you mean '{closest(name, keywords)}'?"
    elif expected:
        listed = expected[:8]
        if len(expected) > 8:
            hint = "expected " + ", ".join(listed) + ", ..."
        elif len(listed) > 1:
            hint = "expected " + ", ".join(listed[:-1]) + " or " + listed[-1]
        else:
            hint = "expected " + listed[0]
    return LmlangSyntaxError(message, span, hint).with_source(source)


def _unclosed_string(source: Source, upto_line: int) -> LmlangSyntaxError | None:
    """The error for the first string never closed at or before the line
    where parsing failed: Lark only sees a stray quote (or an `r`, or an
    empty string and a stray quote for \"\"\"), so its own message says
    little; this points at where the string starts."""
    for i, ch in brackets(source.text):
        if ch not in ('"', '"""'):
            continue
        line, col = line_col(source.text, i)
        if line > upto_line:
            return None
        if i > 0 and source.text[i - 1] == "r":
            end = source.text.find('"', i + 1)  # a raw string has no escapes: closed after all?
            if ch == '"' and end >= 0 and "\n" not in source.text[i:end]:
                continue
            i, col = i - 1, col - 1
        span = source.span(line, col, line, col + len(ch) + (source.text[i] == "r"))
        if ch == '"""':
            return LmlangSyntaxError(
                'unclosed string: this """ is never closed', span, 'close it with """'
            ).with_source(source)
        return LmlangSyntaxError(
            'unclosed string: this " has no closing " on its line',
            span,
            'close it on the same line, or write """...""" for text over several lines',
        ).with_source(source)
    return None


# ---------------------------------------------------------------- strings


def _token_span(tok, source: Source) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column, source.filename)


def _string_body(tok) -> tuple[str, bool, int]:
    """(raw body, is_raw, offset of body from token start)."""
    text = str(tok)
    raw = text.startswith("r")
    q = 3 if text[int(raw) :].startswith('"""') else 1
    start = int(raw) + q
    return text[start : len(text) - q], raw, start


def _positions(tok, body_offset: int, body: str):
    """(line, col) of each body index and one past the end."""
    line, col = tok.line, tok.column + body_offset
    out = []
    for ch in body:
        out.append((line, col))
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
    out.append((line, col))
    return out


def _escape(body: str, i: int, extra: dict | None = None) -> tuple[str, int]:
    """The text of the escape at body[i] (a backslash) and its length. One
    table for strings and prompts; prompts add \\{ \\} \\[ \\]. Unknown
    escapes keep their backslash (regexes need `\\d`)."""
    nxt = body[i + 1]
    if extra and nxt in extra:
        return extra[nxt], 2
    if nxt in SIMPLE_ESCAPES:
        return SIMPLE_ESCAPES[nxt], 2
    if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]):
        return chr(int(body[i + 2 : i + 6], 16)), 6
    return body[i : i + 2], 2


def decode_string(tok, source: Source) -> str:
    body, raw, _ = _string_body(tok)
    if raw:
        return body
    out, i = [], 0
    while i < len(body):  # jump from backslash to backslash: long strings stay fast
        j = body.find("\\", i)
        if j < 0 or j + 1 >= len(body):
            out.append(body[i:])
            break
        out.append(body[i:j])
        text, n = _escape(body, j)
        out.append(text)
        i = j + n
    return "".join(out)


def scan_prompt(tok, source: Source) -> tuple:
    """Split a prompt string into Text / Interp / Hole parts with spans."""
    body, raw, offset = _string_body(tok)
    pos = _positions(tok, offset, body)

    def span(a: int, b: int) -> Span:
        (l1, c1), (l2, c2) = pos[a], pos[b]
        return Span(l1, c1, l2, c2, source.filename)

    parts: list = []
    buf: list[str] = []
    buf_start = 0
    i = 0

    def flush(end: int) -> None:
        if buf:
            parts.append(A.Text("".join(buf), span=span(buf_start, end)))
            buf.clear()

    while i < len(body):
        ch = body[i]
        if ch == "\\" and not raw and i + 1 < len(body):
            if not buf:
                buf_start = i
            text, n = _escape(body, i, PROMPT_ESCAPES)
            buf.append(text)
            i += n
            continue
        if ch in "{[":
            close = "}" if ch == "{" else "]"
            j = body.find(close, i + 1)
            nl = body.find("\n", i + 1)
            if j < 0 or (0 <= nl < j):
                raise LmlangSyntaxError(
                    f"unclosed '{ch}' in prompt",
                    span(i, i + 1),
                    f"close it with '{close}', or write \\{ch} for a literal '{ch}'",
                )
            inner = body[i + 1 : j]
            if ch == "{" and TOOL_CALL.match(inner):
                flush(i)
                parts.append(_tool_call(inner if raw else inner.replace('\\"', '"'), span(i, j + 1)))
                i = j + 1
                continue
            if ch == "{":
                path = inner.strip().split(".")
                if not all(IDENT.fullmatch(p) for p in path):
                    raise LmlangSyntaxError(
                        f"invalid interpolation {{{inner}}}",
                        span(i, j + 1),
                        "write {name} or {name.field}; write \\{ for a literal '{'",
                    )
                flush(i)
                parts.append(A.Interp(tuple(path), span=span(i, j + 1)))
            else:
                name = inner.strip()
                if not IDENT.fullmatch(name):
                    raise LmlangSyntaxError(
                        f"invalid hole [{inner}]", span(i, j + 1), "a hole is [name]; write \\[ for a literal '['"
                    )
                flush(i)
                parts.append(A.Hole(name, span=span(i, j + 1)))
            i = j + 1
            continue
        if ch in "}]":
            raise LmlangSyntaxError(f"unmatched '{ch}' in prompt", span(i, i + 1), f"write \\{ch} for a literal '{ch}'")
        if not buf:
            buf_start = i
        buf.append(ch)
        i += 1
    flush(len(body))
    return tuple(parts)


# ---------------------------------------------------------------- tool calls in prompts (issue 15)

TOOL_CALL = re.compile(r"\s*call\s*\(")
_TOOL_ARG = re.compile(
    r'\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*))\s*'
)


def _tool_call(inner: str, span: Span) -> A.ToolCall:
    """`call("name", arg, ...)` inside a prompt's braces. Arguments are
    string or number literals and names (`expr`, `q.text`): a prompt holds
    no full expressions, so its text stays readable and a brace never needs
    nesting."""
    hint = 'write {call("tool", arg, ...)} with string, number or name arguments'
    body = inner.strip()
    if not body.endswith(")"):
        raise LmlangSyntaxError(f"invalid tool call {{{inner}}}", span, hint)
    text = body[body.index("(") + 1 : -1]
    args: list = []
    pos = 0
    while pos < len(text) and text[pos:].strip():
        m = _TOOL_ARG.match(text, pos)
        if not m:
            raise LmlangSyntaxError(f"invalid tool call {{{inner}}}", span, hint)
        if m.group(1) is not None:
            args.append(A.Lit(m.group(1).replace('\\"', '"'), span=span))
        elif m.group(2) is not None:
            args.append(
                A.Lit(_number(m.group(2).lstrip("-"), span) * (-1 if m.group(2).startswith("-") else 1), span=span)
            )
        else:
            head, *rest = m.group(3).split(".")
            e: A.Expr = A.Var(head, span=span)
            for f in rest:
                e = A.Attr(e, f, span=span)
            args.append(e)
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise LmlangSyntaxError(f"invalid tool call {{{inner}}}", span, hint)
            pos += 1
    if not args or not isinstance(args[0], A.Lit) or not isinstance(args[0].value, str):
        raise LmlangSyntaxError("a tool call names its tool first, as a string", span, hint)
    return A.ToolCall(args[0].value, tuple(args[1:]), span=span)


# ---------------------------------------------------------------- tree -> AST


class _StringTok:
    """A decoded string that remembers its token (for prompt scanning)."""

    __slots__ = ("tok", "value", "span")

    def __init__(self, tok, value: str, span: Span):
        self.tok, self.value, self.span = tok, value, span


def _make_transformer_class():
    import lark
    from lark import v_args

    @v_args(meta=True)
    class ToAst(lark.Transformer):
        def __init__(self, source: Source):
            super().__init__()
            self.source = source

        def sp(self, meta) -> Span:
            if getattr(meta, "empty", True):
                return Span(1, 1, 1, 1, self.source.filename)
            return Span(meta.line, meta.column, meta.end_line, meta.end_column, self.source.filename)

        def tsp(self, tok) -> Span:
            return _token_span(tok, self.source)

        # -- terminals and small pieces
        def string(self, meta, ch):
            tok = ch[0]
            if len(tok) > MAX_STRING_CHARS:
                raise LmlangSyntaxError(
                    f"string of {len(tok)} characters, more than {MAX_STRING_CHARS}",
                    Span(tok.line, tok.column, tok.line, tok.column + 1, self.source.filename),
                    "keep long texts in a data file (`--data`) or an input's value",
                )
            return _StringTok(tok, decode_string(tok, self.source), self.tsp(tok))

        def signed_number(self, meta, ch):
            sign, num = ch
            v = _number(num, self.tsp(num))
            return A.Literal(-v if sign else v, span=self.sp(meta))

        def true(self, meta, ch):
            return A.Literal(True, span=self.sp(meta))

        def false(self, meta, ch):
            return A.Literal(False, span=self.sp(meta))

        def list_value(self, meta, ch):
            if len(ch) > MAX_LIST_ITEMS:
                raise LmlangSyntaxError(
                    f"list of {len(ch)} items, more than {MAX_LIST_ITEMS}",
                    self.sp(meta),
                    "match the value with `matches r\"...\"` or a grammar instead",
                )
            return A.ListValue(tuple(self._value(c) for c in ch if c is not None), span=self.sp(meta))

        def _value(self, v):
            if isinstance(v, _StringTok):
                return A.Literal(v.value, span=v.span)
            return v

        def block(self, meta, ch):
            return A.Block(tuple(ch), span=self.sp(meta))

        def entry(self, meta, ch):
            key, value = ch
            if isinstance(key, _StringTok):
                key = A.Literal(key.value, span=key.span)
            return A.Entry(key, self._value(value), span=self.sp(meta))

        def matches_value(self, meta, ch):
            return A.MatchesValue(ch[0].value, span=self.sp(meta))

        def contains_value(self, meta, ch):
            return A.ContainsValue(ch[0], span=self.sp(meta))

        def call_opts(self, meta, ch):
            return tuple(c for c in ch if c is not None)

        def kwarg(self, meta, ch):
            return A.KwArg(str(ch[0]), self._value(ch[1]), span=self.sp(meta), name_span=self.tsp(ch[0]))

        def type_ref(self, meta, ch):
            return A.TypeRef(str(ch[0]), ch[1], span=self.sp(meta))

        # -- declarations
        def start(self, meta, ch):
            return A.Program(tuple(ch), self.source.filename, span=self.sp(meta))

        def use_decl(self, meta, ch):
            return A.UseDecl(ch[0].value, span=self.sp(meta))

        def input_decl(self, meta, ch):
            name, typ, default = ch
            return A.InputDecl(
                str(name),
                typ,
                self._value(default) if default is not None else None,
                span=self.sp(meta),
                name_span=self.tsp(name),
            )

        def model_decl(self, meta, ch):
            name, expr = ch
            if isinstance(expr, _StringTok):
                expr = A.PathModel(expr.value, span=expr.span)
            return A.ModelDecl(str(name), expr, span=self.sp(meta), name_span=self.tsp(name))

        def server_source(self, meta, ch):
            url, block = ch
            return A.ServerModel(url.value, block or A.Block((), span=self.sp(meta)), span=self.sp(meta))

        def vllm_source(self, meta, ch):
            src, block = ch
            return A.VllmModel(src.value, block or A.Block((), span=self.sp(meta)), span=self.sp(meta))

        def vllm_default(self, meta, ch):
            (block,) = ch
            return A.VllmModel("default", block or A.Block((), span=self.sp(meta)), span=self.sp(meta))

        def model_expr(self, meta, ch):
            base, adapters = ch[0], tuple(ch[1:])
            if not adapters:
                return base
            return A.Adapted(base, adapters, span=self.sp(meta))

        def scaled_adapter(self, meta, ch):
            name, scale = ch
            return A.ScaledAdapter(str(name), float(scale.value) if scale is not None else 1.0, span=self.sp(meta))

        def default_model(self, meta, ch):
            return A.DefaultModel(span=self.sp(meta))

        def model_ref(self, meta, ch):
            return A.ModelRef(str(ch[0]), span=self.sp(meta))

        def router_call(self, meta, ch):
            return A.RouterCall(str(ch[0]), tuple(c for c in ch[1:] if c is not None), span=self.sp(meta))

        def merge_expr(self, meta, ch):
            return A.MergeExpr(str(ch[0]), ch[1], span=self.sp(meta))

        def fuse_expr(self, meta, ch):
            mode, opts, block = ch
            return A.FuseExpr(str(mode) if mode is not None else "linear", opts or (), block, span=self.sp(meta))

        def lora_source(self, meta, ch):
            return A.LoraSource(ch[0].value, span=self.sp(meta))

        def train_source(self, meta, ch):
            data, block = ch
            return A.TrainSource(data.value, block or A.Block((), span=self.sp(meta)), span=self.sp(meta))

        def adapter_merge(self, meta, ch):
            return A.AdapterMerge(str(ch[0]), ch[1], span=self.sp(meta))

        def adapter_decl(self, meta, ch):
            return A.AdapterDecl(str(ch[0]), ch[1], span=self.sp(meta), name_span=self.tsp(ch[0]))

        def router_decl(self, meta, ch):
            name, kind, opts, using, block = ch
            return A.RouterDecl(
                str(name), str(kind), opts or (), using, block, span=self.sp(meta), name_span=self.tsp(name)
            )

        # -- queries
        def param(self, meta, ch):
            return A.Param(str(ch[0]), ch[1], span=self.sp(meta), name_span=self.tsp(ch[0]))

        def decoder(self, meta, ch):
            return A.Decoder(str(ch[0]), ch[1] or (), span=self.sp(meta))

        def segment(self, meta, ch):
            role, s = ch
            return A.Segment(
                str(role) if role is not None else None, scan_prompt(s.tok, self.source), span=self.sp(meta)
            )

        def where_clause(self, meta, ch):
            return A.Where(tuple(ch), span=self.sp(meta))

        def distribution_clause(self, meta, ch):
            return A.Distribution(str(ch[0]), ch[1], span=self.sp(meta))

        def c_in(self, meta, ch):
            return A.CIn(str(ch[0]), ch[1], span=self.sp(meta))

        def c_matches(self, meta, ch):
            return A.CMatches(str(ch[0]), ch[1].value, span=self.sp(meta))

        def c_json(self, meta, ch):
            hole, opts, t = ch
            opts = opts or ()
            if isinstance(t, _StringTok):
                return A.CJson(str(hole), None, t.value, opts, span=self.sp(meta))
            return A.CJson(str(hole), t, None, opts, span=self.sp(meta))

        def c_grammar(self, meta, ch):
            return A.CGrammar(str(ch[0]), ch[1].value, span=self.sp(meta))

        def c_is(self, meta, ch):
            return A.CIs(str(ch[0]), str(ch[1]), ch[2], span=self.sp(meta))

        def c_stops_at(self, meta, ch):
            return A.CStop(str(ch[0]), ch[1].value, True, span=self.sp(meta))

        def c_stops_before(self, meta, ch):
            return A.CStop(str(ch[0]), ch[1].value, False, span=self.sp(meta))

        def c_len(self, meta, ch):
            fn, hole, op, n = ch
            return A.CLen(str(fn), str(hole), str(op), _number(n, self.tsp(n)), span=self.sp(meta))

        def j_object(self, meta, ch):
            return A.JObject(tuple(ch), span=self.sp(meta))

        def json_field(self, meta, ch):
            name, opt, t = ch
            return A.JField(str(name), opt is not None, t, span=self.sp(meta))

        def j_array(self, meta, ch):
            return A.JArray(ch[0], ch[1], span=self.sp(meta))

        def j_scalar(self, meta, ch):
            return A.JScalar(str(ch[0]), ch[1], span=self.sp(meta))

        def j_enum(self, meta, ch):
            return A.JEnum(tuple(s.value for s in ch), span=self.sp(meta))

        def range(self, meta, ch):
            lo, _dots, hi = ch
            return A.JRange(
                lo.value if lo is not None else None, hi.value if hi is not None else None, span=self.sp(meta)
            )

        def query_decl(self, meta, ch):
            name, *rest = ch
            params = tuple(c for c in rest if isinstance(c, A.Param))
            using = next(
                (
                    c
                    for c in rest
                    if c is not None
                    and isinstance(c, (A.DefaultModel, A.ModelRef, A.RouterCall, A.Adapted, A.MergeExpr, A.FuseExpr))
                ),
                None,
            )
            decoder = next((c for c in rest if isinstance(c, A.Decoder)), None)
            segments = tuple(c for c in rest if isinstance(c, A.Segment))  # PromptBlocks too
            wheres = tuple(c for c in rest if isinstance(c, A.Where))
            dists = [c for c in rest if isinstance(c, A.Distribution)]
            if len(dists) > 1:
                raise LmlangSyntaxError(
                    "a query has at most one distribution clause", dists[1].span, "ask for the distribution of one hole"
                )
            return A.QueryDecl(
                str(name),
                params,
                using,
                decoder,
                segments,
                wheres,
                dists[0] if dists else None,
                span=self.sp(meta),
                name_span=self.tsp(name),
            )

        # -- grown prompts, while, def (issue 15): self-contained, so they move with the transformer
        def prompt_block(self, meta, ch):
            role, body = ch
            return A.PromptBlock(str(role), (), body, span=self.sp(meta))

        def plain_block(self, meta, ch):
            return A.PromptBlock(None, (), (ch[0],), span=self.sp(meta))

        def p_body(self, meta, ch):
            return tuple(ch)

        def p_seg(self, meta, ch):
            return A.Segment(None, scan_prompt(ch[0].tok, self.source), span=self.sp(meta))

        def p_for(self, meta, ch):
            return A.PromptFor(str(ch[0]), ch[1], ch[2], span=self.sp(meta), name_span=self.tsp(ch[0]))

        def p_if(self, meta, ch):
            cond, then, orelse = ch
            if isinstance(orelse, A.PromptIf):
                orelse = (orelse,)
            return A.PromptIf(cond, then, orelse or (), span=self.sp(meta))

        def p_break(self, meta, ch):
            return A.PromptBreak(span=self.sp(meta))

        def while_stmt(self, meta, ch):
            cond, n, body = ch  # no bound: max 0, which the checker refuses with a hint
            return A.While(cond, _number(n, self.tsp(n)) if n is not None else 0, body, span=self.sp(meta))

        def return_stmt(self, meta, ch):
            return A.Return(ch[0], span=self.sp(meta))

        def def_decl(self, meta, ch):
            name, *params, body = ch
            names = tuple(str(p) for p in params if p is not None)
            return A.DefDecl(str(name), names, body, span=self.sp(meta), name_span=self.tsp(name))

        # -- flow
        def flow_decl(self, meta, ch):
            return A.FlowDecl(ch[0], span=self.sp(meta))

        def stmt_block(self, meta, ch):
            return tuple(ch)

        def assign(self, meta, ch):
            return A.Assign(str(ch[0]), ch[1], span=self.sp(meta), name_span=self.tsp(ch[0]))

        def if_stmt(self, meta, ch):
            cond, then, orelse = ch
            if isinstance(orelse, A.If):
                orelse = (orelse,)
            return A.If(cond, then, orelse or (), span=self.sp(meta))

        def for_stmt(self, meta, ch):
            return A.For(str(ch[0]), ch[1], ch[2], span=self.sp(meta), name_span=self.tsp(ch[0]))

        def emit_stmt(self, meta, ch):
            return A.Emit(tuple(ch), span=self.sp(meta))

        def emit_item(self, meta, ch):
            name, value = ch
            if value is None:
                value = A.Var(str(name), span=self.tsp(name))
            return A.EmitItem(str(name), value, span=self.sp(meta), name_span=self.tsp(name))

        def _chain(self, meta, ch, op_of):
            left = ch[0]
            i = 1
            while i < len(ch):
                if op_of is None:
                    op, right = str(ch[i]), ch[i + 1]
                    i += 2
                else:
                    op, right = op_of, ch[i]
                    i += 1
                left = A.BinOp(
                    op,
                    left,
                    right,
                    span=Span(
                        left.span.line, left.span.col, right.span.end_line, right.span.end_col, self.source.filename
                    ),
                )
            return left

        def or_expr(self, meta, ch):
            return self._chain(meta, ch, "or")

        def and_expr(self, meta, ch):
            return self._chain(meta, ch, "and")

        def comparison(self, meta, ch):
            return self._chain(meta, ch, None)

        def arith(self, meta, ch):
            return self._chain(meta, ch, None)

        def term(self, meta, ch):
            return self._chain(meta, ch, None)

        def in_op(self, meta, ch):
            return A.BinOp("in", ch[0], ch[1], span=self.sp(meta))

        def not_op(self, meta, ch):
            return A.UnaryOp("not", ch[0], span=self.sp(meta))

        def neg(self, meta, ch):
            return A.UnaryOp("-", ch[0], span=self.sp(meta))

        def attr(self, meta, ch):
            return A.Attr(ch[0], str(ch[1]), span=self.sp(meta))

        def index(self, meta, ch):
            return A.Index(ch[0], ch[1], span=self.sp(meta))

        def call(self, meta, ch):
            name, *args = ch
            pos = tuple(a for a in args if a is not None and not isinstance(a, tuple))
            kws = tuple(a for a in args if isinstance(a, tuple))
            return A.Call(str(name), pos, kws, span=self.sp(meta))

        def arg(self, meta, ch):
            return ch[0]

        def kwarg_expr(self, meta, ch):
            return (str(ch[0]), ch[1])

        def number(self, meta, ch):
            return A.Lit(_number(ch[0], self.tsp(ch[0])), span=self.sp(meta))

        def string_lit(self, meta, ch):
            return A.Lit(ch[0].value, span=ch[0].span)

        def lit_true(self, meta, ch):
            return A.Lit(True, span=self.sp(meta))

        def lit_false(self, meta, ch):
            return A.Lit(False, span=self.sp(meta))

        def var(self, meta, ch):
            return A.Var(str(ch[0]), span=self.sp(meta))

        def list_expr(self, meta, ch):
            return A.ListExpr(tuple(c for c in ch if c is not None), span=self.sp(meta))

    return ToAst


def _number(tok, span: Span):
    """A number literal's value. Longer than MAX_NUMBER_DIGITS digits, or a
    float that overflows to infinity, is refused here with its span: no later
    stage (range regexes, JSON export, int() of a bound) meets such a value."""
    text = str(tok)
    digits = len(text.split("e")[0].split("E")[0].replace(".", ""))
    if digits > MAX_NUMBER_DIGITS:
        raise LmlangSyntaxError(
            f"number has {digits} digits, more than {MAX_NUMBER_DIGITS}",
            span,
            "write a smaller number (int holes hold 64-bit values)",
        )
    if re.fullmatch(r"\d+", text):
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise LmlangSyntaxError(
            f"number {text} is too large (not a finite 64-bit float)", span, "write a number below 1.8e308"
        )
    return value


_TO_AST = None


def _ToAst(source: Source):
    global _TO_AST
    if _TO_AST is None:
        _TO_AST = _make_transformer_class()
    return _TO_AST(source)
