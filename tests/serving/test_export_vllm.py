"""An exported adapter served by a REAL vLLM (marker `vllm`): the PEFT folder
that `export` writes is loaded as a LoRA module (runtime loading: the same as
`--lora-modules`) and its greedy outputs equal lmlang's own with the adapter
it was exported from, for a LoRA folder and for an adapter lmlang trained."""

from __future__ import annotations

import json
import pytest

import lmlang
from lmlang.lifecycle.export import run_exports

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]

ROWS = [
    {"prompt": "The capital of France is", "completion": " Paris, the city of lights."},
    {"prompt": "The capital of Italy is", "completion": " Rome, the eternal city."},
]
QUERIES = '''
query a(t: str) using tuned { "{t} [x]" where tokens(x) <= 8 }
query c(t: str) using tuned {
    user "{t}"
    assistant "[y]"
    where tokens(y) <= 8
}
flow { emit a = a("The capital of France is").x, c = c("Name a city.").y }
'''


def test_exported_adapters_served_by_vllm_equal_lmlang(tmp_path, lora_dir, vllm_server):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    build = (
        "model base = default\n"
        f'adapter rnd = lora "{lora_dir}"\n'
        'adapter fit = train lora on "train.jsonl" { base: base, rank: 8, epochs: 2, max_length: 32 }\n'
        'export rnd to "out/rnd"\nexport fit to "out/fit"\n'
    )
    prog = lmlang.compile(build, base_dir=tmp_path)
    done = {x.name: x.path for x in run_exports(prog)}
    for name in ("rnd", "fit"):
        local = lmlang.compile(build + f"model tuned = base + {name}\n" + QUERIES, base_dir=tmp_path).run()
        served_src = f'model base = vllm default\nadapter ex = lora "{done[name]}"\nmodel tuned = base + ex\n' + QUERIES
        served = lmlang.compile(served_src, base_dir=tmp_path).run()
        assert served == local, name
    plain = lmlang.compile("model base = default\nmodel tuned = base\n" + QUERIES).run()
    assert plain != lmlang.compile(build + "model tuned = base + rnd\n" + QUERIES, base_dir=tmp_path).run()
