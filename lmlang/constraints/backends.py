"""The three mask backends behind one small interface.

    Backend.compile(plan, tok) -> artifact      (may raise BackendCannot)
    Backend.dump(artifact) / load(bytes, tok)   (disk cache; None = not worth caching)
    Backend.matcher(artifact, tok) -> Matcher   (one decoding)

    Matcher.fill(words)       write the allowed-token bitmask (int32 words, bit i = token i;
                              EOS set iff the value may end here)
    Matcher.consume(t) -> bool
    Matcher.accepting()       the text so far is a complete value
    Matcher.stopped()         nothing but EOS can follow (None: unknown, ask the mask)
    Matcher.forced_bytes()    the unique continuation bytes, b"" if none known
    Matcher.forced_tokens()   backend-native fast-forward tokens, or None
    Matcher.clone()

Registry is explicit (`BACKENDS`, `get_backend`). Which backend serves which
plan kind, and the fallback order, is `CHAINS` (see engine.py for the figures).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..suggest import did_you_mean
from .lower import OUTLINES_ENFORCED, XGRAMMAR_ENFORCED, Plan, choice_lark, llguidance_json_options, schema_keywords
from .vocab import TokenizerInfo


class BackendCannot(Exception):
    """This backend cannot compile this plan (the chain tries the next one)."""


class Matcher(ABC):
    @abstractmethod
    def fill(self, words: np.ndarray) -> None: ...

    @abstractmethod
    def consume(self, token: int) -> bool: ...

    @abstractmethod
    def accepting(self) -> bool: ...

    def stopped(self) -> bool | None:
        return None

    def forced_bytes(self) -> bytes:
        return b""

    def forced_tokens(self) -> list[int] | None:
        return None

    @abstractmethod
    def clone(self) -> "Matcher": ...


class Backend(ABC):
    name: str

    @abstractmethod
    def compile(self, plan: Plan, tok: TokenizerInfo, *, gate: bool = True) -> Any:
        """gate=False skips lmlang's keyword gating (benchmarks measure the raw backend)."""

    def dump(self, artifact: Any) -> bytes | None:
        return None

    def load(self, data: bytes, tok: TokenizerInfo) -> Any:  # pragma: no cover - only if dump returns bytes
        raise NotImplementedError

    @abstractmethod
    def matcher(self, artifact: Any, tok: TokenizerInfo) -> Matcher: ...


# ============================================================================ llguidance
def _ll_tokenizer(tok: TokenizerInfo):
    import llguidance

    def build():
        tokens = list(tok.token_bytes)
        for i in tok.special_ids:
            tokens[i] = b"\xff<|special_%d|>" % i  # 0xFF marks special tokens for llguidance
        tokens[tok.eos_token_id] = b"\xff<|eos|>"

        class _Wrapped:
            eos_token_id = tok.eos_token_id
            bos_token_id = None
            special_token_ids = list(tok.special_ids)

            def __call__(self, data):
                text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
                return tok.encode(text)

        wrapped = _Wrapped()
        wrapped.tokens = tokens
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapped), n_vocab=tok.vocab_size)

    return tok.backend_object("llguidance", build)


class _LLMatcher(Matcher):
    __slots__ = ("m",)

    def __init__(self, m):
        self.m = m

    def fill(self, words: np.ndarray) -> None:
        self.m.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)

    def consume(self, token: int) -> bool:
        return self.m.consume_token(token)

    def accepting(self) -> bool:
        return self.m.is_accepting()

    def stopped(self) -> bool | None:
        return self.m.is_stopped()

    def forced_bytes(self) -> bytes:
        return self.m.compute_ff_bytes()

    def forced_tokens(self) -> list[int] | None:
        return list(self.m.compute_ff_tokens())

    def clone(self) -> "_LLMatcher":
        return _LLMatcher(self.m.deep_copy())

    def error(self) -> str:
        return self.m.get_error()


class LLGuidanceBackend(Backend):
    """Earley parser over lazily built lexer DFAs: ms compiles, widest JSON Schema coverage."""

    name = "llguidance"

    def grammar(self, plan: Plan, rewrite: bool = True) -> str:
        import llguidance

        if plan.kind == "json" and not rewrite:
            return llguidance.LLMatcher.grammar_from_json_schema(plan.text, overrides=llguidance_json_options())
        if plan.kind == "json":
            from .jsonfix import llguidance_schema_grammar

            grammar, err = llguidance_schema_grammar(plan.text, llguidance_json_options())
            if err:
                raise BackendCannot(err.strip().splitlines()[0])
            return grammar
        if plan.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(plan.text)
        if plan.kind == "regex":
            if plan.options is not None:  # a Choice: literal alternatives, no regex escaping issues
                if not plan.options:
                    raise BackendCannot("no option is possible")
                return llguidance.LLMatcher.grammar_from_lark(choice_lark(plan.options))
            return llguidance.LLMatcher.grammar_from_regex(plan.text)
        raise BackendCannot(f"no grammar for plan kind {plan.kind}")

    def compile(self, plan: Plan, tok: TokenizerInfo, *, gate: bool = True) -> Any:
        import llguidance

        g = self.grammar(plan, rewrite=gate)
        lltok = _ll_tokenizer(tok)
        m = llguidance.LLMatcher(lltok, g, log_level=0)
        if m.is_error():
            raise BackendCannot(m.get_error().strip().splitlines()[0] if m.get_error().strip() else "invalid grammar")
        return m  # a pristine matcher: start() deep-copies it

    def dump(self, artifact: Any) -> bytes | None:
        return None  # compiling is ms; nothing to gain

    def matcher(self, artifact: Any, tok: TokenizerInfo) -> Matcher:
        return _LLMatcher(artifact.deep_copy())


# ============================================================================ outlines_core
def _oc_vocabulary(tok: TokenizerInfo):
    import outlines_core

    def build():
        table: dict[bytes, list[int]] = {}
        for i, b in enumerate(tok.token_bytes):
            if b and i != tok.eos_token_id:
                table.setdefault(b, []).append(i)
        return outlines_core.Vocabulary(tok.eos_token_id, table)

    return tok.backend_object("outlines_core", build)


class _OCMatcher(Matcher):
    __slots__ = ("g", "n")

    def __init__(self, g, n):
        self.g = g
        self.n = n

    def fill(self, words: np.ndarray) -> None:
        self.g.write_mask_into(words.ctypes.data, words.size, 4)

    def consume(self, token: int) -> bool:
        try:
            self.g.advance(token, return_tokens=False)
            return True
        except Exception:
            return False

    def accepting(self) -> bool:
        return self.g.is_finished()

    def clone(self) -> "_OCMatcher":
        import copy

        return _OCMatcher(copy.copy(self.g), self.n)


class OutlinesCoreBackend(Backend):
    """Token-level DFA index built eagerly: fastest masks, slow (cached) builds."""

    name = "outlines_core"

    def compile(self, plan: Plan, tok: TokenizerInfo, *, gate: bool = True) -> Any:
        import outlines_core

        if plan.kind == "regex":
            if plan.options is not None and not plan.options:
                raise BackendCannot("no option is possible")
            pattern = plan.text
        elif plan.kind == "json":
            schema = json.loads(plan.text)
            unsupported = schema_keywords(schema) - OUTLINES_ENFORCED
            if unsupported and gate:
                raise BackendCannot(f"outlines_core does not enforce {sorted(unsupported)}")
            try:
                pattern = outlines_core.json_schema.build_regex_from_schema(plan.text, r"[ ]?")
            except Exception as e:
                raise BackendCannot(f"outlines_core: {e}") from None
        else:
            raise BackendCannot(f"outlines_core handles regex and JSON only, not {plan.kind}")
        try:
            return outlines_core.Index(pattern, _oc_vocabulary(tok))
        except Exception as e:
            raise BackendCannot(f"outlines_core: {str(e).splitlines()[0]}") from None

    def dump(self, artifact: Any) -> bytes | None:
        # The index's own binary form (what its __reduce__ hands pickle),
        # read back by Rust: a cache file is data, never unpickled.
        _rebuild, args = artifact.__reduce__()
        return args[0] if len(args) == 1 and isinstance(args[0], bytes) else None

    def load(self, data: bytes, tok: TokenizerInfo) -> Any:
        import outlines_core

        return outlines_core.Index.from_binary(data)

    def matcher(self, artifact: Any, tok: TokenizerInfo) -> Matcher:
        import outlines_core

        return _OCMatcher(outlines_core.Guide(artifact), tok.vocab_size)


# ============================================================================ xgrammar
def _xg_tokenizer(tok: TokenizerInfo):
    import xgrammar

    def build():
        info = xgrammar.TokenizerInfo(
            list(tok.token_bytes), xgrammar.VocabType.RAW, vocab_size=tok.vocab_size, stop_token_ids=[tok.eos_token_id]
        )
        return info, xgrammar.GrammarCompiler(info, max_threads=2, cache_enabled=False)

    return tok.backend_object("xgrammar", build)


class _XGMatcher(Matcher):
    __slots__ = ("m",)

    def __init__(self, m):
        self.m = m

    def fill(self, words: np.ndarray) -> None:
        self.m.fill_next_token_bitmask(words.reshape(1, -1))

    def consume(self, token: int) -> bool:
        return self.m.accept_token(token)

    def accepting(self) -> bool:
        return self.m.is_completed()

    def stopped(self) -> bool | None:
        return self.m.is_terminated() or None

    def forced_bytes(self) -> bytes:
        s = self.m.find_jump_forward_string()
        return s.encode("utf-8") if isinstance(s, str) else bytes(s)

    def clone(self) -> "_XGMatcher":
        return _XGMatcher(self.m.fork())


class XGrammarBackend(Backend):
    """Pushdown automaton with precomputed context-independent masks."""

    name = "xgrammar"

    def compile(self, plan: Plan, tok: TokenizerInfo, *, gate: bool = True) -> Any:
        _info, compiler = _xg_tokenizer(tok)
        try:
            if plan.kind == "regex":
                if plan.options is not None and not plan.options:
                    raise BackendCannot("no option is possible")
                return compiler.compile_regex(plan.text)
            if plan.kind == "json":
                from .jsonfix import xgrammar_ignored

                schema = json.loads(plan.text)
                unsupported = (schema_keywords(schema) - XGRAMMAR_ENFORCED) | xgrammar_ignored(schema)
                if unsupported and gate:
                    raise BackendCannot(f"xgrammar does not enforce {sorted(unsupported)}")
                return compiler.compile_json_schema(
                    plan.text, any_whitespace=False, separators=(", ", ": "), strict_mode=False
                )
            if plan.kind == "lark":
                return compiler.compile_lark(plan.text)
        except BackendCannot:
            raise
        except Exception as e:
            raise BackendCannot(
                f"xgrammar: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
            ) from None
        raise BackendCannot(f"xgrammar cannot handle plan kind {plan.kind}")

    def dump(self, artifact: Any) -> bytes | None:
        return artifact.serialize_json().encode()

    def load(self, data: bytes, tok: TokenizerInfo) -> Any:
        import xgrammar

        info, _ = _xg_tokenizer(tok)
        return xgrammar.CompiledGrammar.deserialize_json(data.decode(), info)

    def matcher(self, artifact: Any, tok: TokenizerInfo) -> Matcher:
        import xgrammar

        return _XGMatcher(xgrammar.GrammarMatcher(artifact))


# ============================================================================ registry
BACKENDS: dict[str, Backend] = {
    "llguidance": LLGuidanceBackend(),
    "outlines_core": OutlinesCoreBackend(),
    "xgrammar": XGrammarBackend(),
}

# Preferred order per plan kind (measured; see engine.py's docstring).
CHAINS: dict[str, tuple[str, ...]] = {
    "regex": ("llguidance", "xgrammar", "outlines_core"),
    "json": ("llguidance", "xgrammar", "outlines_core"),
    "lark": ("llguidance", "xgrammar"),
    "free": (),
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        close = did_you_mean(name, BACKENDS)
        hint = f"; {close}" if close else ""
        raise ValueError(f"unknown constraint backend '{name}'{hint} (known: {', '.join(BACKENDS)})") from None
