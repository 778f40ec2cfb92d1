"""Lark's parse tree -> lmlang's frozen AST nodes, each with its span.

The Transformer class is made per parser module (`make_transformer_class`):
each Transformer recognises subtrees by its own Tree class, so the
generated parser (lmlang/grammar_parser.py, run by lalr_driver.py) and
lark's need one each.
Limits that bound what later stages meet (string length, list length,
number digits) are enforced here, where the literal is read.
"""

from __future__ import annotations


from . import ast as A
from .errors import LmlangSyntaxError
from .parser_strings import StringTok as _StringTok
from .parser_strings import MAX_NUMBER_DIGITS as MAX_NUMBER_DIGITS
from .parser_strings import decode_string, scan_prompt
from .parser_strings import number_value as _number
from .parser_strings import token_span as _token_span
from .source import Source, Span

MAX_STRING_CHARS = 1024 * 1024  # one string literal
MAX_LIST_ITEMS = 10_000  # one list (a choice's options)


class _Rules:
    """One method per grammar rule: (meta, children) -> AST node. Copied into
    a Transformer subclass of the parser's own module by
    make_transformer_class, which is what Lark's v_args decorates (it wraps
    only methods defined on the class itself, not inherited ones)."""

    source: Source  # set by the Transformer subclass's __init__ (make_transformer_class)

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

    def fuse_list_expr(self, meta, ch):
        mode, opts, members = ch
        return A.FuseExpr(str(mode), opts or (), members, listed=True, span=self.sp(meta))

    def fuse_list(self, meta, ch):
        # each member an entry with itself as value: no weight was written
        return A.Block(tuple(A.Entry(m, m, span=m.span) for m in ch), span=self.sp(meta))

    def lora_source(self, meta, ch):
        return A.LoraSource(ch[0].value, span=self.sp(meta))

    def train_source(self, meta, ch):
        method, data, block = ch
        block = block or A.Block((), span=self.sp(meta))
        return A.TrainSource(data, block, str(method), span=self.sp(meta))

    def adapter_merge(self, meta, ch):
        return A.AdapterMerge(str(ch[0]), ch[1], span=self.sp(meta))

    def adapter_compress(self, meta, ch):
        name, block = ch
        block = block or A.Block((), span=self.sp(meta))
        return A.AdapterCompress(str(name), block, span=self.sp(meta), adapter_span=self.tsp(name))

    def adapter_decl(self, meta, ch):
        return A.AdapterDecl(str(ch[0]), ch[1], span=self.sp(meta), name_span=self.tsp(ch[0]))

    def router_decl(self, meta, ch):
        name, kind, source, opts, using, block = ch
        glob = A.Literal(source.value, span=source.span) if source is not None else None
        return A.RouterDecl(
            str(name), str(kind), opts or (), using, block, glob, span=self.sp(meta), name_span=self.tsp(name)
        )

    # -- lifecycle: data sets, evals, exports
    def data_arg(self, meta, ch):
        (v,) = ch
        if isinstance(v, _StringTok):
            return A.DataRef(path=v.value, span=v.span)
        return A.DataRef(name=str(v), span=self.tsp(v))

    def data_file(self, meta, ch):
        return A.DataFile(ch[0].value, span=ch[0].span)

    def data_select(self, meta, ch):
        k, pool, target, method = ch
        return A.DataSelect(
            _number(k, self.tsp(k)), pool, target, str(method), span=self.sp(meta), method_span=self.tsp(method)
        )

    def gen_block(self, meta, ch):
        entries = tuple(c for c in ch if isinstance(c, A.Entry))
        wheres = tuple(c for c in ch if isinstance(c, A.Where))
        return A.Block(entries, span=self.sp(meta)), wheres

    def data_generate(self, meta, ch):
        model, source, (block, wheres) = ch
        return A.DataGenerate(model, source, block, wheres, span=self.sp(meta))

    def data_decl(self, meta, ch):
        return A.DataDecl(str(ch[0]), ch[1], span=self.sp(meta), name_span=self.tsp(ch[0]))

    def eval_decl(self, meta, ch):
        name, metric, query, data, keyword, expected = ch
        return A.EvalDecl(
            str(name),
            str(metric),
            str(query),
            data,
            str(keyword),
            str(expected),
            span=self.sp(meta),
            name_span=self.tsp(name),
            metric_span=self.tsp(metric),
            query_span=self.tsp(query),
            keyword_span=self.tsp(keyword),
            expected_span=self.tsp(expected),
        )

    def export_decl(self, meta, ch):
        target, path = ch
        return A.ExportDecl(str(target), path.value, span=self.sp(meta), target_span=self.tsp(target))

    # -- queries
    def param(self, meta, ch):
        return A.Param(str(ch[0]), ch[1], span=self.sp(meta), name_span=self.tsp(ch[0]))

    def decoder(self, meta, ch):
        return A.Decoder(str(ch[0]), ch[1] or (), span=self.sp(meta))

    def guard(self, meta, ch):  # second wave: `guard leak(...)`
        return A.Guard(str(ch[0]), ch[1] or (), span=self.sp(meta))

    def segment(self, meta, ch):
        role, s = ch
        return A.Segment(str(role) if role is not None else None, scan_prompt(s.tok, self.source), span=self.sp(meta))

    def where_clause(self, meta, ch):
        # a top-level `a and b` is the clause's list of conditions
        return A.Where(tuple(ch[0]) if isinstance(ch[0], tuple) else (ch[0],), span=self.sp(meta))

    # -- second wave (issue #15): `or`, parentheses, `not in`, `in NAME`
    def c_and(self, meta, ch):
        out: list = []
        for c in ch:
            out.extend(c if isinstance(c, tuple) else (c,))
        return tuple(out)  # a conjunction is a plain tuple of conditions

    def c_or(self, meta, ch):
        branches = tuple(c if isinstance(c, tuple) else (c,) for c in ch)
        return A.COr(branches[0][0].hole, branches, span=self.sp(meta))

    def c_in_name(self, meta, ch):
        return A.CInName(str(ch[0]), str(ch[1]), span=self.sp(meta))

    def c_not_in(self, meta, ch):
        return A.CNotIn(str(ch[0]), ch[1], span=self.sp(meta))

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
        return A.JRange(lo.value if lo is not None else None, hi.value if hi is not None else None, span=self.sp(meta))

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
            guard=next((c for c in rest if isinstance(c, A.Guard)), None),
            span=self.sp(meta),
            name_span=self.tsp(name),
        )

    # -- grown prompts, while, def (issue 15)
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
                span=Span(left.span.line, left.span.col, right.span.end_line, right.span.end_col, self.source.filename),
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


def make_transformer_class(lark_module):
    """The AST-building Transformer for trees made by `lark_module` (lark
    itself, or the generated module, which re-exports lalr_driver's
    Transformer and v_args)."""
    base = lark_module.Transformer

    def __init__(self, source: Source):
        base.__init__(self)
        self.source = source

    rules = {k: v for k, v in vars(_Rules).items() if not k.startswith("__")}
    return lark_module.v_args(meta=True)(type("ToAst", (base,), {**rules, "__init__": __init__}))
