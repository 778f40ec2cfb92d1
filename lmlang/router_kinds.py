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

    def option(self, name: str):
        return next((o for o in self.options if o[0] == name), None)

    def options_text(self) -> str:
        if not self.options:
            return f"route {self.name} takes no options"
        return f"route {self.name} takes " + ", ".join(f"{o[0]}: {'|'.join(o[1])}" for o in self.options)


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
    )
}
