"""`export NAME to "dir"`: what lmlang built, as folders other tools load.

- An adapter (a LoRA folder, a trained adapter, an adapter merge or a
  compressed one) becomes a PEFT folder: `adapter_config.json` and
  `adapter_model.safetensors`, loadable with `PeftModel.from_pretrained`
  and by vLLM's `--lora-modules`.
- A model (a source, a merge, or `base + adapter`, whose adapters are merged
  into the weights first) becomes a Hugging Face folder: config, tokenizer,
  safetensors weights, loadable with `AutoModelForCausalLM.from_pretrained`.

Each folder gets a model card (README.md) with the recipe (the script's own
statements that built it) and the sha256 content hashes of its inputs
(model sources, adapter folders, training data), and `lmlang_export.json`
with the same facts as data. A folder is written beside its destination and
renamed into place; an existing destination is replaced only when it is an
earlier lmlang export (or empty), never a folder lmlang did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import LmlangRuntimeError
from ..graph import LoraSpec, ModelSpec, TrainSpec
from ..graph.specs import VllmSpec

MARKER = "lmlang_export.json"
# Files of a built folder that loading reads; lmlang's own metadata
# (lmlang-model.json, lmlang_adapter.json) and READMEs stay behind.
_COPIED_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".tiktoken")
_LMLANG_FILES = ("lmlang-model.json", "lmlang_adapter.json", MARKER)


@dataclass(frozen=True)
class Exported:
    name: str
    kind: str  # "adapter" | "model"
    path: Path
    files: tuple[str, ...]


def run_exports(program, only: tuple[str, ...] = (), say=None) -> list[Exported]:
    """Run the script's `export` statements (those naming `only`, if given),
    building what they name (cached builds are reused)."""
    checked = program.frontend.checked
    compiled = program.frontend.compiled
    execu = program._executor()
    out = []
    for decl in checked.exports:
        if only and decl.target not in only:
            continue
        nid = compiled.names[decl.target]
        dest = checked.path_for(decl.path, decl)
        value = execu.builder.value(nid)
        kind = "adapter" if decl.target in checked.adapters else "model"
        card = recipe(checked, compiled, nid)
        out.append(export_value(decl.target, kind, value, dest, card))
        if say:
            say(f"exported {kind} {decl.target} to {dest}")
    return out


def export_value(name: str, kind: str, value, dest: Path, card: dict) -> Exported:
    """Write one built value (an adapter folder, or a model value from
    runtime/build.py) to `dest` as a PEFT or HF folder."""
    from ..runtime.build import Folder, Fused, Stacked

    if isinstance(value, Fused):
        raise LmlangRuntimeError(f"{name}: a fusion has no single set of weights to export")
    if isinstance(value, Stacked):
        value = Folder(_merged(value))
    src = Path(value.path) if isinstance(value, Folder) else Path(value)
    if kind == "adapter" and not (src / "adapter_config.json").is_file():
        raise LmlangRuntimeError(f"{name}: {src} is not a PEFT adapter folder (no adapter_config.json)")
    _check_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        files = []
        for f in sorted(src.iterdir()):
            if f.is_file() and f.suffix.lower() in _COPIED_SUFFIXES and f.name not in _LMLANG_FILES:
                shutil.copyfile(f, tmp / f.name)
                files.append(f.name)
        if kind == "model" and not any(f.endswith(".safetensors") for f in files):
            raise LmlangRuntimeError(f"{name}: {src} holds no safetensors weights to export")
        facts = {"name": name, "kind": kind, **card, "files": files}
        (tmp / "README.md").write_text(model_card(facts), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Exported(name, kind, dest, tuple(files))


def _merged(v) -> Path:
    """base + adapters as full weights (the cached merge runtime/build.py uses)."""
    from ..merge.lora import merge_loras

    adapters = [(folder, {"weight": scale}) for folder, scale in v.stack]
    return Path(merge_loras("task_arithmetic", adapters, {}, base_model=v.base, output="full").path)


def _check_destination(dest: Path) -> None:
    if dest.is_file() or dest.is_symlink():
        raise LmlangRuntimeError(f"export path {dest} is a file or a link", hint="name a new or empty folder")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER).is_file():
        raise LmlangRuntimeError(
            f"export path {dest} is a folder lmlang did not write",
            hint="export replaces only its own earlier exports: name a new or empty folder",
        )


# ---------------------------------------------------------------- the recipe


def recipe(checked, compiled, nid: str) -> dict:
    """The statements that build node `nid` (the script's own text, in
    script order) and the content hashes of the files they read."""
    closure, todo = set(), [nid]
    while todo:
        n = todo.pop()
        if n not in closure:
            closure.add(n)
            todo.extend(compiled.spec(n).deps())
    names = {name for n in closure for name in compiled.node_names.get(n, ())}
    decls = [d for table in (checked.models, checked.adapters) for name, d in table.items() if name in names]
    decls.sort(key=lambda d: (d.span.filename, d.span.line, d.span.col))
    statements = [_statement_text(checked, d) for d in decls]
    inputs = {}
    for n in sorted(closure):
        spec = compiled.spec(n)
        if isinstance(spec, (ModelSpec, VllmSpec)):
            from ..models.loader import resolve_model

            inputs[f"model {spec.source}"] = content_hash(resolve_model(spec.source))
        elif isinstance(spec, LoraSpec):
            inputs[f"adapter {spec.path}"] = content_hash(Path(spec.path))
        elif isinstance(spec, TrainSpec) and spec.dataset:
            from .data import recipe_key

            blob = json.dumps(recipe_key(spec.recipe, lambda nid: nid), sort_keys=True).encode()
            inputs[f"training data set {spec.dataset}"] = hashlib.sha256(blob).hexdigest()
        elif isinstance(spec, TrainSpec):
            inputs[f"training data {spec.data}"] = content_hash(Path(spec.data))
    return {"recipe": statements, "inputs": inputs}


def _statement_text(checked, d) -> str:
    src = checked.sources.get(d.span.filename) or checked.source
    lines = src.text.splitlines()[d.span.line - 1 : d.span.end_line]
    if not lines:
        return ""
    lines[-1] = lines[-1][: d.span.end_col - 1]  # the end first: on one line, cutting the start moves it
    lines[0] = lines[0][d.span.col - 1 :]
    return "\n".join(lines).rstrip()


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and bytes, sorted)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def model_card(facts: dict) -> str:
    kind = facts["kind"]
    load = (
        "```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, PATH)\n```"
        if kind == "adapter"
        else "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)\n```"
    )
    recipe_text = "\n\n".join(facts["recipe"]) or "(no statements)"
    inputs = "\n".join(f"- {k}: `{v}`" for k, v in facts["inputs"].items()) or "- (none)"
    return (
        f"---\nlibrary_name: {'peft' if kind == 'adapter' else 'transformers'}\ntags: [lmlang]\n---\n\n"
        f"# {facts['name']}\n\n{'An adapter' if kind == 'adapter' else 'A model'} exported by lmlang (`export {facts['name']} to ...`).\n\n"
        f"## Recipe\n\nThe statements of the lmlang script that built it:\n\n```lmlang\n{recipe_text}\n```\n\n"
        f"## Inputs\n\nContent hashes of the files it was built from:\n\n{inputs}\n\n## Loading\n\n{load}\n"
    )
