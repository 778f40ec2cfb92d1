"""Router kinds: one table that the checker validates `router NAME = route
KIND ...` declarations against, the highlighter and docs list, and the
runtime dispatches on (each kind names the runtime class that implements it,
imported only when a program runs). Torch-free.

Adding a router kind: one runtime class (see `runtime`), one entry here. The
grammar needs nothing: `route NAME` takes any name and the checker looks it up.
"""

from __future__ import annotations

from .frozen import frozen

EXAMPLES, DESCRIPTION, RULE = "examples", "description", "rule"


@frozen
class RouterKind:
    name: str
    summary: str
    payloads: tuple  # what an expert entry may hold: EXAMPLES, DESCRIPTION, RULE
    options: tuple = ()  # ((option, allowed values (first is the default), what it means), ...)
    needs_using: bool = False  # `route KIND using MODEL { ... }`
    has_default: bool = False  # exactly one `default: MODEL` entry
    min_experts: int = 2
    runtime: str = ""  # "module:Class" of the runtime implementation
    # `route KIND "GLOB" { option: value }`: a kind that takes a source reads
    # its block as options, not experts (pool: the glob of adapter folders)
    takes_source: bool = False
    block_options: tuple = ()  # (BlockOption, ...)

    def block_option(self, name: str) -> "BlockOption | None":
        return next((o for o in self.block_options if o.name == name), None)

    def option(self, name: str):
        return next((o for o in self.options if o[0] == name), None)

    def options_text(self) -> str:
        if not self.options:
            return f"route {self.name} takes no options"
        return f"route {self.name} takes " + ", ".join(f"{o[0]}: {'|'.join(o[1])}" for o in self.options)


@frozen
class BlockOption:
    """One option of a block read as options (`route pool "..." { top_k: 2 }`).
    type: "model", "int" (>= lo), "number" (> lo), "word" (one of `words`),
    "examples" ({ "member": ["text", ...] })."""

    name: str
    type: str
    default: object = None
    lo: float = 0
    words: tuple = ()
    required: bool = False
    doc: str = ""


POOL_OPTIONS = (
    BlockOption("base", "model", required=True, doc="the model every adapter of the pool was trained on"),
    BlockOption("top_k", "int", 1, lo=1, doc="how many adapters are mixed per row"),
    BlockOption("by", "word", "embedding", words=("embedding", "gate"), doc="how rows are scored against adapters"),
    BlockOption("encoder", "word", "minilm", words=("minilm", "base"), doc="by: embedding's sentence encoder"),
    BlockOption("temperature", "number", 0.05, lo=0, doc="the softmax temperature over the chosen scores"),
    BlockOption("n_examples", "int", 8, lo=1, doc="training prompts read per adapter as its examples"),
    BlockOption(
        "examples", "examples", doc='{ "folder name": ["text", ...] }: examples that replace an adapter\'s own'
    ),
)


ROUTER_KINDS: dict[str, RouterKind] = {
    k.name: k
    for k in (
        RouterKind(
            "embedding",
            "nearest example (or description) by sentence embedding",
            (EXAMPLES, DESCRIPTION),
            options=(
                (
                    "encoder",
                    ("minilm", "base"),
                    "minilm (sentence model), base (the expert's base model hidden states)",
                ),
            ),
            runtime="lmlang.runtime.routing:Router",
        ),
        RouterKind(
            "classify",
            "a constrained choice over the experts' descriptions, asked of a model",
            (DESCRIPTION,),
            needs_using=True,
            runtime="lmlang.runtime.routing:Router",
        ),
        RouterKind(
            "rules",
            "first matching regex or keyword rule, else the default",
            (RULE,),
            has_default=True,
            min_experts=1,
            runtime="lmlang.runtime.routing:Router",
        ),
        RouterKind(
            "pool",
            "any number of LoRA folders (a glob); each row mixes its top_k adapters, weighted by their scores",
            (),
            min_experts=0,
            takes_source=True,
            block_options=POOL_OPTIONS,
            runtime="lmlang.runtime.routing:PoolRouter",
        ),
    )
}
