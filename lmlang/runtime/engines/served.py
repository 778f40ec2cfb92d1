"""The served engine: a query's rows as requests to an OpenAI-compatible server.

All rows of a job are in flight together, bounded by the model's
`concurrency` (the client's semaphore), each with its own timeout and
retries; a row's holes go one request after another, each continuing the
prompt rendered so far (the server's prefix cache makes that cheap). The
meaning is the local engine's (runtime/decode.py), decoder by decoder:

    argmax      temperature 0 (greedy), the same token ids in as locally (served_prompt)
    sample      temperature / top_p / top_k / seed sent as they are written; the
                server's random numbers are not torch's, so samples differ from a
                local run with the same seed (each is repeatable on its own engine)
    best_of     n samples (seeds seed+k, as locally), the highest log-probability
                wins; the server reports the model's log-probabilities before the
                constraint's mask, lmlang's local decoder after it
    vote        n samples, the most frequent value of the last hole wins
    beam        refused at check time (checker/served.py)
    distribution  exact: for each option, the prompt log-probabilities of the
                option's tokens and of each token that may end it (EOS, or the
                next text's first token), summed and normalised, as
                decode.score_distribution does with local logits

Every value is validated against its constraint (served_holes) before it is
handed on; a row whose request fails gets its error, the other rows go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

from dataclasses import dataclass, field

from ...errors import LmlangError, LmlangRuntimeError
from .. import samples
from ..prompt import render
from ..samples import sample_count
from ..trace import QueryTrace
from .base import Engine, RowsJob
from .deploy import Deployment, served_model
from .served_holes import plan_hole
from .served_prompt import Cursor, TemplateVia


@dataclass
class _Run:
    """One decoding of one row (a sample of best_of/vote, or the only one)."""

    values: dict = field(default_factory=dict)
    texts: dict = field(default_factory=dict)
    holes: list = field(default_factory=list)
    logprob: float = 0.0
    tokens: int = 0
    requests: int = 0
    distribution: dict | None = None
    details: dict = field(default_factory=dict)  # vote: samples, votes; best_of: scores (runtime/samples.py)


class ServedEngine(Engine):
    name = "served"

    def __init__(self, executor, nid: str):
        self.executor = executor
        self.nid = nid
        self._target: tuple[Deployment, str] | None = None
        self.on_request = None  # on_request(row index, hole, keywords): bench/engine.py replays them

    def target(self) -> tuple[Deployment, str]:
        """(deployment, model name): the server is started or probed on first use."""
        if self._target is None:
            self._target = served_model(self.executor.c, self.executor.builder, self.nid)
        return self._target

    def run_rows(self, job: RowsJob) -> None:
        dep, model = self.target()
        rows = _Rows(self, dep, model, job)
        records = dep.client.run(rows.run_all())
        if job.trace is not None:
            order = {i: k for k, i in enumerate(job.rows)}
            for _i, rec in sorted(records, key=lambda r: order[r[0]]):
                job.trace.add(rec)


class _Rows:
    def __init__(self, engine: ServedEngine, dep: Deployment, model: str, job: RowsJob):
        self.engine, self.dep, self.model, self.job = engine, dep, model, job
        self.spec = job.spec
        self.constraints = dict(self.spec.constraints)
        self.label = engine.executor.c.display_name(engine.nid)
        self.where = dep.where(model)
        self.records: list = []

    async def run_all(self) -> list:
        await asyncio.gather(*(self.row(i) for i in self.job.rows))
        return self.records

    async def row(self, i: int) -> None:
        job, spec = self.job, self.spec
        t0 = time.perf_counter()
        try:
            rendered = await self.render(job.envs[i])
            run = await self.decode(i, rendered)
        except LmlangError as e:
            job.results[i] = e
            return
        out = dict(run.values)
        if run.distribution is not None:
            out["distribution"] = run.distribution
        if job.expert is not None:
            out["expert"] = job.expert
        out.update(run.details)
        job.results[i] = out
        self.records.append(
            (
                i,
                QueryTrace(
                    query=spec.name,
                    model=self.label,
                    prompt=rendered.display(),
                    values=dict(run.texts),
                    holes=run.holes,
                    forward_passes=0,
                    tokens_generated=run.tokens,
                    tokens_forced=0,
                    wall_seconds=time.perf_counter() - t0,
                    decoder=spec.decoder[0],
                    details=dict(run.details),
                    expert=job.expert,
                    row=job.row_ids[i] if job.row_ids else None,
                ),
            )
        )

    # ------------------------------------------------------------ prompts
    async def render(self, env: dict):
        spec, dep = self.spec, self.dep
        if not spec.chat:
            return render(spec.segments, env, None, False, spec.loc)
        if dep.tokens is not None and dep.api != "chat":
            return render(spec.segments, env, dep.tokens.tokenizer, True, spec.loc)
        if dep.api == "chat":
            return render(spec.segments, env, TemplateVia(self._capture, _json_string_body), True, spec.loc)
        if not dep.is_vllm:
            raise LmlangRuntimeError(
                f"{self.where}: cannot render the chat template: lmlang has no tokenizer "
                "for this model and the server has no /tokenize endpoint",
                hint='give one with tokenizer: "..." (default, a hub id, a folder), or use api: "chat"',
            )
        loop = asyncio.get_running_loop()

        def apply(messages, add_generation_prompt):
            coro = self._server_template(messages, add_generation_prompt)
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        return await asyncio.to_thread(render, spec.segments, env, TemplateVia(apply), True, spec.loc)

    async def _server_template(self, messages, add_generation_prompt) -> str:
        ac = self.dep.client.aclient
        ids = await ac.tokenize_chat(messages, add_generation_prompt=add_generation_prompt, model=self.dep.model)
        return await ac.detokenize(ids, model=self.dep.model)

    @staticmethod
    def _capture(messages, add_generation_prompt) -> str:
        """For a chat-only endpoint: the messages themselves, as JSON (the checker
        made the one hole the whole last assistant message)."""
        return json.dumps(messages[:-1], ensure_ascii=False) + messages[-1]["content"]

    # ------------------------------------------------------------ decoders
    async def decode(self, i: int, rendered) -> _Run:
        name, opts = self.spec.decoder
        opts = dict(opts)
        if self.spec.distribution is not None:
            return await self.distribution(rendered, *self.spec.distribution)
        seed = opts.get("seed") if self.job.seed is None else self.job.seed
        if name == "argmax":
            return await self.sample_run(i, rendered, {"temperature": 0.0}, stream=True)
        if name == "sample" and sample_count(self.spec.decoder) == 1:
            assert seed is not None  # sampling decoders resolve a default seed (decoders.SAMPLING)
            return await self.sample_run(i, rendered, _sampling(opts, seed), stream=True)
        if name in ("best_of", "vote", "sample"):
            assert seed is not None  # as for sample
            runs = await asyncio.gather(
                *(self.sample_run(i, rendered, _sampling(opts, seed + k), logprobs=True) for k in range(opts["n"]))
            )
            if name == "sample":  # sample(n: k): every hole a list (runtime/samples.py)
                holes = rendered.holes
                best = _Run(
                    samples.as_lists([r.values for r in runs], holes), samples.as_lists([r.texts for r in runs], holes)
                )
                best.holes = [h for r in runs for h in r.holes]
            elif name == "best_of":
                k, details = samples.best_of([r.logprob for r in runs])
                best, best.details = runs[k], details
            else:
                k, details = samples.vote([r.values for r in runs], rendered.holes[-1])
                best, best.details = runs[k], details
            best.tokens, best.requests = sum(r.tokens for r in runs), sum(r.requests for r in runs)
            return best
        raise LmlangRuntimeError(f"served model '{self.label}' cannot run decoder {name}")  # the checker refuses beam

    async def sample_run(self, i: int, rendered, sampling: dict, stream: bool = False, logprobs: bool = False) -> _Run:
        from ..decode import typed_value

        dep, run = self.dep, _Run()
        cur = Cursor.start(rendered, dep.tokens if dep.api != "chat" else None)
        for h, hole in enumerate(rendered.holes):
            chat_api = dep.api == "chat"
            req = plan_hole(
                hole,
                self.constraints.get(hole),
                dep.features,
                self.label,
                "" if chat_api else cur.heals[h],
                cur.terminators[h],
                tokens=None if chat_api else dep.tokens,
                next_token=cur.next_tokens[h] if cur.next_tokens else None,
            )
            kw = {**sampling, **req.kwargs(), "model": self.model}
            if logprobs:
                kw["logprobs"] = 0
            out = await self._request(i, hole, rendered, cur, req, kw)
            text, ended_by = req.value(out, self.where)
            run.texts[hole] = text
            run.values[hole] = typed_value(text, self.constraints.get(hole))
            run.tokens += out.completion_tokens or 0
            run.requests += 1
            run.logprob += sum(t.logprob for t in out.logprobs or ())
            run.holes.append(
                {
                    "name": hole,
                    "backend": "server",
                    "compile_seconds": 0.0,
                    "generated": out.completion_tokens or 0,
                    "forced": 0,
                    "ended_by": ended_by,
                }
            )
            if stream and self.job.on_token is not None:
                self.job.on_token(i, hole, text)
            cur.advance(text)
        return run

    async def _request(self, i: int, hole: str, rendered, cur: Cursor, req, kw: dict):
        ac = self.dep.client.aclient
        if self.engine.on_request is not None:
            self.engine.on_request(i, hole, dict(kw, prompt=cur.prompt(with_seam=not req.heal)))
        async with self._gated(alone=False):
            if self.dep.api == "chat":
                return await ac.chat(json.loads(rendered.chunks[0]), **kw)
            return await ac.completion(cur.prompt(with_seam=not req.heal), **kw)

    def _gated(self, alone: bool):
        """The deployment's ScoreGate (a LoRA-enabled vLLM), or nothing to wait for."""
        gate = self.dep.gate
        if gate is None:
            return contextlib.nullcontext()
        return gate.alone() if alone else gate.shared()

    async def distribution(self, rendered, hole: str, options: tuple) -> _Run:
        """Exact option probabilities from prompt log-probabilities (see module docstring)."""
        if rendered.holes.index(hole) > 0:
            raise LmlangRuntimeError("distribution must be over the last hole")  # the checker enforces it
        prefix, opt_ids, ends = await self._distribution_ids(rendered, options)
        ac = self.dep.client.aclient

        async def score(ids: list, end: int) -> float:
            async with self._gated(alone=True):
                return await ac.score(prefix + ids + [end], len(prefix), model=self.model)

        flat = await asyncio.gather(*(score(ids, e) for ids in opt_ids for e in ends))
        per = [flat[k * len(ends) : (k + 1) * len(ends)] for k in range(len(options))]
        scores = [_logsumexp(p) for p in per]
        top = max(scores)
        z = sum(math.exp(s - top) for s in scores)
        probs = [math.exp(s - top) / z for s in scores]
        best = options[scores.index(top)]
        run = _Run(values={hole: best}, texts={hole: best}, logprob=top, requests=len(flat))
        run.distribution = dict(zip(options, probs))
        return run

    async def _distribution_ids(self, rendered, options) -> tuple[list, list, list]:
        dep = self.dep
        cur = Cursor.start(rendered, dep.tokens)
        if dep.tokens is not None:
            tk = dep.tokens
            ends = set(tk.eos_ids) | ({cur.next_tokens[0]} if cur.next_tokens[0] is not None else set())
            return cur.first_ids, [tk.tok_info.encode(cur.heals[0] + o) for o in options], sorted(ends)
        if not dep.is_vllm:
            raise LmlangRuntimeError(
                f"{self.where}: a distribution needs the model's tokenizer (or vLLM's /tokenize)",
                hint='give one with tokenizer: "..."',
            )
        ac = dep.client.aclient
        nxt = rendered.chunks[1] if len(rendered.chunks) > 1 else ""
        if not nxt:
            raise LmlangRuntimeError(
                f"{self.where}: without the model's tokenizer lmlang cannot tell which token "
                "ends an option at the end of the prompt",
                hint='give one with tokenizer: "..."',
            )
        prefix = await ac.tokenize(cur.text, add_special_tokens=True, model=dep.model)
        opts = [await ac.tokenize(cur.heals[0] + o, model=dep.model) for o in options]
        end = (await ac.tokenize(nxt, model=dep.model))[:1]
        return prefix, opts, end


def _sampling(opts: dict, seed: int) -> dict:
    out = {"temperature": float(opts["temperature"]), "top_p": float(opts["top_p"]), "seed": int(seed)}
    if opts.get("top_k"):
        out["top_k"] = int(opts["top_k"])
    return out


def _logsumexp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def _json_string_body(value: str) -> str:
    """A value as it is written inside a JSON string (no quotes)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]
