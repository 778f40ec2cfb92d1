"""`lmlang repl`: declarations and statements entered one at a time.

The REPL holds no language logic of its own: it keeps the accepted
declaration sources and a dict of variables, and evaluates each entry by
compiling a small whole program through the public API, e.g. for
`x = classify(review).label`:

    <every accepted declaration>
    input review: str                 # one input per REPL variable
    flow {
    x = classify(review).label
    emit __set_x = x
    }

and running it with the variables as input values. An entry that fails to
parse, check or run is reported and dropped; what was accepted before stays.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LmlangError, ScriptError
from .source import Source, brackets

if TYPE_CHECKING:
    from .program import Program

DECL_WORDS = ("input", "model", "adapter", "router", "query", "def", "use")
STMT_WORDS = ("if", "for", "while", "emit")
_ASSIGN = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(?!=)")
_FIRST = re.compile(r"^\s*([A-Za-z_]\w*)")
_SET = "__set_"
_VALUE = "__value"
_REPL_FILE = "<repl>"

HELP = """\
Enter declarations (model, query, input, adapter, router, def, use), statements
(x = ..., if, for, while ... max N, emit) or expressions; blocks continue while braces are open
(the prompt shows which). A line starting with a command runs it, even inside
an unfinished entry, which is then dropped.

  :help           this text
  :load FILE      add FILE's declarations (its flow runs with :run)
  :run [K=V ...]  run the loaded file's flow (inputs from K=V and variables)
  :vars           the variables and their values
  :decls          the declarations entered so far
  :graph          the execution graph of the declarations (mermaid)
  :trace          what the last entry's queries did (prompt, values, tokens)
  :models         the default and cached models
  :reset          forget every declaration and variable
  :quit           leave (or Ctrl-D)"""


# Every command word; a line starting with one of them runs as that command
# even inside an unfinished entry (which is then dropped), so `:quit` and
# `:help` always work.
COMMANDS = ("help", "h", "?", "quit", "q", "exit", "reset", "vars", "decls", "load", "run", "graph", "models", "trace")
_COMMAND_LINE = re.compile(r"^\s*:(" + "|".join(re.escape(c) for c in COMMANDS) + r")(?=\s|$)")


def is_command(line: str) -> bool:
    """Whether `line` is a REPL command (`:quit`, `:load FILE`, ...)."""
    return bool(_COMMAND_LINE.match(line))


def open_brackets(text: str) -> str:
    """What is still open at the end of `text`, outermost first: bracket
    characters, then three double quotes for an unclosed triple-quoted
    string ("" if nothing is). Shown in the continuation prompt."""
    stack: list[str] = []
    for _i, ch in brackets(text):
        if ch == '"""':
            return "".join(stack) + '"""'
        if ch == '"':
            continue
        if ch in "{[(":
            stack.append(ch)
        elif stack:
            stack.pop()
    return "".join(stack)


def continuation_prompt(text_before: str, width: int) -> str:
    """The prompt of a continuation line: what is open, right-aligned in
    the width of the main prompt (`lm> ` -> `..{ `, `.{[ `)."""
    opened = open_brackets(text_before)[-(max(width - 1, 1)) :]
    return opened.rjust(max(width - 1, 0), ".") + " "


def needs_more(text: str) -> bool:
    """True while `text` has an open brace, bracket, parenthesis or string,
    so the REPL keeps reading lines into the same entry."""
    depth = 0
    for _i, ch in brackets(text):
        if ch == '"""':
            return True
        if ch == '"':
            return False  # an unterminated one-line string is an error, not a continuation
        depth += 1 if ch in "{[(" else -1
    return depth > 0


def input_type(value) -> str:
    """The input type that carries a Python value into a flow unchanged."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def show(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class Decl:
    names: tuple[str, ...]
    text: str


@dataclass
class Session:
    """The REPL's state and evaluation, with no terminal I/O."""

    base_dir: Path = field(default_factory=Path.cwd)
    device: str = "auto"
    allow_paths: tuple = ()  # --allow-path: folders scripts may read besides base_dir's tree
    functions: dict = field(default_factory=dict)
    decls: list[Decl] = field(default_factory=list)
    vars: dict = field(default_factory=dict)
    loaded_flow: tuple[str, str] | None = None  # (file, flow source) from :load
    last_program: Program | None = None
    on_token: Any = None  # on a terminal: values printed as they grow (streaming.StreamPrinter)

    # ------------------------------------------------------------ entries
    def feed(self, entry: str) -> list[str]:
        """Evaluate one entry; returns the lines to print. Raises
        LmlangError (rendered against the entry) when it is rejected."""
        text = entry.strip()
        if not text:
            return []
        if text.startswith(":"):
            return self.command(text)
        m = _FIRST.match(text)
        word = m.group(1) if m else ""
        if word in DECL_WORDS:
            return self.declare(entry)
        if word == "flow" and text[4:].lstrip().startswith("{"):
            body = text[4:].strip()[1:-1] if text.endswith("}") else text
            return self.statement(body, emits_back=True)
        if word in STMT_WORDS or _ASSIGN.match(text):
            return self.statement(entry, emits_back=word != "emit")
        return self.expression(entry)

    def declare(self, entry: str, filename: str = _REPL_FILE) -> list[str]:
        from . import ast as A
        from .parser import parse

        try:
            parsed = parse(entry, filename)
        except LmlangError as e:
            raise _Rejected(e.render(Source(entry, filename))) from None
        new, flows = [], []
        for d in parsed.decls:
            if isinstance(d, A.FlowDecl):
                flows.append(d)
                continue
            name = getattr(d, "name", None) or ("use " + getattr(d, "path", ""))
            new.append(Decl((name,), _slice(entry, d.span)))
        names = {n for d in new for n in d.names}
        kept = [d for d in self.decls if not names & set(d.names)]
        # Check the entry as written (its flow blanked out, lines kept) after
        # the kept declarations, so a diagnostic points at the entry's own lines.
        checked = entry
        for f in flows:
            checked = _blank(checked, f.span)
        self._compile(kept, "", entry_lines=checked, decl_text=checked, decl_names=names, filename=filename)
        self.decls = kept + new
        out = [f"defined {d.names[0]}" for d in new]
        return out + (["(its flow is kept for :run)"] if flows and filename == _REPL_FILE else [])

    def statement(self, stmt: str, emits_back: bool = True) -> list[str]:
        writes: list[str] = []
        if emits_back:
            probe = self._compile(self.decls, stmt, entry_lines=stmt)
            steps = probe.frontend.compiled
            writes = sorted({w for nid in steps.steps for w in steps.spec(nid).writes})
        while True:
            try:
                prog = self._compile(self.decls, stmt, entry_lines=stmt, emits=writes)
                break
            except _EmitProblem as p:
                writes = [w for w in writes if w not in p.names]  # loop-local names do not come back
        values = self._run(prog)
        out = []
        for k, v in values.items():
            if k.startswith(_SET):
                name = k[len(_SET) :]
                self.vars[name] = v
                out.append(f"{name} = {show(v)}")
            else:
                out.append(f"{k}: {show(v)}")
        return out

    def expression(self, expr: str) -> list[str]:
        prog = self._compile(
            self.decls, f"emit {_VALUE} = (\n{expr.strip()}\n)", entry_lines=expr.strip(), entry_offset=1
        )
        values = self._run(prog)
        return [show(values[_VALUE])]

    # ------------------------------------------------------------ building programs
    def _program_text(
        self,
        decls: list[Decl],
        body: str,
        emits: list[str] | None = None,
        decl_text: str = "",
        decl_names: set | frozenset = frozenset(),
    ) -> tuple[str, int, int]:
        """The whole program, the line where the entry (decl_text or body)
        starts, and the line where the generated emit lines start."""
        declared = set(decl_names)
        for d in decls:
            declared.update(d.names)
        head = [d.text for d in decls]
        for name, value in self.vars.items():
            if name not in declared:
                head.append(f"input {name}: {input_type(value)}")
        text = "\n".join(head) + "\n"
        if decl_text:
            entry_line = text.count("\n") + 1
            return text + decl_text + "\n", entry_line, 0
        if not body:
            return text, 0, 0
        text += "flow {\n"
        body_line = text.count("\n") + 1
        text += body.rstrip() + "\n"
        emit_line = text.count("\n") + 1
        if emits:
            text += "emit " + ",\n".join(f"{_SET}{w} = {w}" for w in emits) + "\n"
        text += "}\n"
        return text, body_line, emit_line

    def _compile(
        self,
        decls: list[Decl],
        body: str,
        entry_lines: str | None,
        emits: list[str] | None = None,
        entry_offset: int = 0,
        decl_text: str = "",
        decl_names: set | frozenset = frozenset(),
        filename: str = _REPL_FILE,
    ):
        from . import program as P
        from .errors import CheckError

        text, entry_line, emit_line = self._program_text(decls, body, emits, decl_text, decl_names)
        try:
            prog = P.compile(
                text,
                _REPL_FILE,
                functions=self.functions,
                base_dir=self.base_dir,
                device=self.device,
                allow_paths=self.allow_paths,
            )
        except CheckError as e:
            if emits:
                bad = [d for d in e.diagnostics if d.span.line >= emit_line]
                if bad and len(bad) == len(e.diagnostics):
                    raise _EmitProblem(
                        {emits[d.span.line - emit_line] for d in bad if 0 <= d.span.line - emit_line < len(emits)}
                    ) from None
            raise _Rejected(self._render(e, text, entry_line + entry_offset, entry_lines, filename)) from None
        except LmlangError as e:
            raise _Rejected(self._render(e, text, entry_line + entry_offset, entry_lines, filename)) from None
        return prog

    def _render(self, e: LmlangError, text: str, first_line: int, entry: str | None, filename: str = _REPL_FILE) -> str:
        """Diagnostics inside the entry point at the entry's own lines."""
        import dataclasses

        whole = Source(text, _REPL_FILE)
        mine = Source(entry or "", filename)
        last = first_line + (entry or "").count("\n")
        parts = []
        for d in e.diagnostics:
            if entry is not None and d.span.line == last + 1 and d.span.filename == _REPL_FILE:
                # Past the entry's end (the wrapper's closing text): the entry is incomplete.
                end_col = len(entry.splitlines()[-1]) + 1 if entry.strip() else 1
                d = dataclasses.replace(
                    d,
                    message=f"incomplete entry: {d.message}",
                    span=dataclasses.replace(d.span, line=last, end_line=last, col=end_col, end_col=end_col + 1),
                )
            if entry is not None and first_line <= d.span.line <= last and d.span.filename == _REPL_FILE:
                shift = first_line - 1
                span = dataclasses.replace(
                    d.span,
                    line=d.span.line - shift,
                    filename=filename,
                    end_line=max(d.span.end_line - shift, d.span.line - shift),
                )
                parts.append(dataclasses.replace(d, span=span).render(mine))
            elif d.span.filename != _REPL_FILE:
                parts.append(d.render(e.source_for(d)))
            elif entry is None:
                parts.append(d.render(whole))
            else:
                parts.append(dataclasses.replace(d, span=dataclasses.replace(d.span, line=0)).render())
        return "\n".join(parts)

    def _run(self, prog) -> dict:
        self.last_program = prog
        inputs = {k: v for k, v in self.vars.items() if k in prog.inputs}
        try:
            return self._run_flow(prog, inputs)
        except LmlangError as e:
            raise _Rejected(e.render(), e.exit_code) from None

    def _run_flow(self, prog, inputs: dict) -> dict:
        """prog's flow, streamed through on_token when the session has one."""
        if self.on_token is None:
            return prog.run(**inputs)
        try:
            return prog.run_streamed(self.on_token, **inputs)
        finally:
            close = getattr(self.on_token, "close", None)
            if close is not None:
                close()

    # ------------------------------------------------------------ commands
    def command(self, text: str) -> list[str]:
        cmd, _, arg = text[1:].partition(" ")
        arg = arg.strip()
        if cmd in ("help", "h", "?"):
            return [HELP]
        if cmd in ("quit", "q", "exit"):
            raise EOFError
        if cmd == "reset":
            self.decls, self.vars, self.loaded_flow, self.last_program = [], {}, None, None
            return ["reset: no declarations, no variables"]
        if cmd == "vars":
            return [f"{k} = {show(v)}" for k, v in self.vars.items()] or ["(no variables)"]
        if cmd == "decls":
            return [d.text for d in self.decls] or ["(no declarations)"]
        if cmd == "load":
            return self.load(arg)
        if cmd == "run":
            return self.run_loaded(arg)
        if cmd == "graph":
            from .graph import graph_to_mermaid

            prog = self._compile(self.decls, "", entry_lines=None)
            return [graph_to_mermaid(prog.frontend.compiled).rstrip()]
        if cmd == "models":
            from .cli import models_table
            from .models.loader import list_models

            return [models_table(list_models()).rstrip()]
        if cmd == "trace":
            return self.trace_lines()
        raise _Rejected(f"unknown command :{cmd} (try :help)")

    def load(self, path: str) -> list[str]:
        if not path:
            raise _Rejected("usage: :load FILE")
        p = Path(path).expanduser()
        if not p.is_absolute():
            p = self.base_dir / p
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise _Rejected(f"cannot read {path}: {e.strerror or e}") from None
        old_base = self.base_dir
        self.base_dir = p.resolve().parent  # the file's relative paths resolve next to it
        try:
            self.declare(text, filename=str(p))  # its "defined ..." lines: summed up below
        except _Rejected:
            self.base_dir = old_base
            raise
        from . import ast as A
        from .parser import parse

        flows = [d for d in parse(text, str(p)).decls if isinstance(d, A.FlowDecl)]
        self.loaded_flow = (str(p), _slice(text, flows[-1].span)) if flows else None
        names = [d.names[0] for d in self.decls]
        return [f"loaded {p.name}: " + ", ".join(names) + (" (flow: :run)" if flows else "")]

    def run_loaded(self, arg: str) -> list[str]:
        import shlex

        if self.loaded_flow is None:
            raise _Rejected("no flow loaded (use :load FILE)")
        sets = {}
        for pair in shlex.split(arg):
            k, sep, v = pair.partition("=")
            if not sep:
                raise _Rejected(f"expected KEY=VALUE, got {pair!r}")
            sets[k] = v
        from . import program as P

        text = "\n".join(d.text for d in self.decls) + "\n" + self.loaded_flow[1] + "\n"
        try:
            prog = P.compile(
                text,
                _REPL_FILE,
                functions=self.functions,
                base_dir=self.base_dir,
                device=self.device,
                allow_paths=self.allow_paths,
            )
        except LmlangError as e:
            raise _Rejected(e.render(Source(text, _REPL_FILE))) from None
        inputs = {k: v for k, v in self.vars.items() if k in prog.inputs}
        inputs.update(sets)
        self.last_program = prog
        try:
            values = self._run_flow(prog, inputs)
        except LmlangError as e:
            raise _Rejected(e.render(), e.exit_code) from None
        return [f"{k}: {show(v)}" for k, v in values.items()]

    def trace_lines(self) -> list[str]:
        if self.last_program is None:
            return ["(no queries ran yet)"]
        recs = self.last_program.trace.records
        if not recs:
            return ["(the last entry ran no query)"]
        out = []
        for r in recs:
            out.append(
                f"{r.query} on {r.model} ({r.decoder}): {r.tokens_generated} generated, {r.tokens_forced} forced, "
                f"{r.forward_passes} forward passes, {r.wall_seconds:.2f}s"
            )
            out.append("  prompt: " + r.prompt.replace("\n", "\n          "))
            out.append("  values: " + show(r.values))
        return out


class _Rejected(ScriptError):
    """An entry the REPL refuses; the message is already rendered. Keeps
    the exit code of the error behind it (2 script error, 1 runtime error)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    def render(self, source=None) -> str:
        return self.message


class _EmitProblem(Exception):
    def __init__(self, names: set):
        super().__init__(", ".join(sorted(names)))
        self.names = names


def _offsets(text: str, span) -> tuple[int, int]:
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts[span.line - 1] + span.col - 1, starts[span.end_line - 1] + span.end_col - 1


def _blank(text: str, span) -> str:
    """`text` with the span's characters turned to spaces (newlines kept)."""
    a, b = _offsets(text, span)
    return text[:a] + re.sub(r"[^\n]", " ", text[a:b]) + text[b:]


def _slice(text: str, span) -> str:
    lines = text.splitlines()
    if span.line == span.end_line:
        return lines[span.line - 1][span.col - 1 : span.end_col - 1]
    first = lines[span.line - 1][span.col - 1 :]
    middle = lines[span.line : span.end_line - 1]
    last = lines[span.end_line - 1][: span.end_col - 1]
    return "\n".join([first, *middle, last])


# ---------------------------------------------------------------- terminal loop


def history_path() -> Path:
    from .home import lmlang_home

    return lmlang_home() / "repl_history"


def run_repl(file: str | None = None, device: str = "auto", stdin=None, stdout=None, allow_paths=()) -> int:
    """The `lmlang repl` loop: prompt_toolkit on a terminal, plain lines otherwise."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    session = Session(device=device, allow_paths=tuple(allow_paths))
    interactive = stdin.isatty() and stdout.isatty()

    def emit(lines: list[str]):
        for line in lines:
            print(line, file=stdout, flush=True)

    def error(msg: str):
        print(msg, file=sys.stderr if not interactive else stdout, flush=True)

    worst = 0
    if file:
        try:
            emit(session.load(file))
        except LmlangError as e:
            error(e.render())
            worst = max(worst, e.exit_code)
    if interactive:
        from .streaming import StreamPrinter

        session.on_token = StreamPrinter(stdout)  # values grow on screen, as `lmlang run --stream`
        return _interactive(session, emit, error)
    buf = ""
    for line in stdin:
        if is_command(line):
            if buf.strip():  # a command ends an unfinished entry instead of joining it
                error(f"error: unfinished entry dropped (still open: {open_brackets(buf) or 'nothing'})")
                worst = max(worst, 2)
            entry, buf = line, ""
        else:
            buf += line
            if needs_more(buf):
                continue
            entry, buf = buf, ""
        try:
            emit(session.feed(entry))
        except EOFError:
            return worst
        except LmlangError as e:
            error(e.render())
            worst = max(worst, e.exit_code)
    if buf.strip():
        error("error: unexpected end of input inside an open block")
        worst = 2
    return worst


def split_command(entry: str) -> tuple[str, str]:
    """(unfinished text, command) when an entry's last line is a command
    typed under an unfinished entry; ("", entry) otherwise."""
    head, sep, last = entry.rpartition("\n")
    if sep and head.strip() and is_command(last):
        return head, last
    return "", entry


def _interactive(session: Session, emit, error) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.lexers import PygmentsLexer

    from .highlight import LmlangLexer

    keys = KeyBindings()

    @keys.add("enter")
    def _(event):
        buf = event.current_buffer
        if needs_more(buf.text) and not is_command(buf.text.rsplit("\n", 1)[-1]):
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    def continuation(width: int, line_number: int, wrap_count: int) -> str:
        before = "\n".join(ps.default_buffer.text.split("\n")[:line_number])
        return continuation_prompt(before, width)

    ps: PromptSession[str] = PromptSession(
        history=FileHistory(str(history_path())),
        lexer=PygmentsLexer(LmlangLexer),
        multiline=True,
        key_bindings=keys,
        prompt_continuation=continuation,
    )
    emit(["lmlang repl — :help for commands, Ctrl-D to leave"])
    while True:
        try:
            entry = ps.prompt("lm> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return 0
        dropped, entry = split_command(entry)
        if dropped:
            error(f"error: unfinished entry dropped (still open: {open_brackets(dropped) or 'nothing'})")
        try:
            emit(session.feed(entry))
        except EOFError:
            return 0
        except KeyboardInterrupt:
            error("interrupted")
        except LmlangError as e:
            error(e.render())
