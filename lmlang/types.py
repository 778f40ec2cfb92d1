"""The small static type language the checker uses for inputs, query
parameters and flow values. Torch-free."""

from __future__ import annotations

from .frozen import frozen

SCALARS = ("str", "int", "float", "bool", "json", "any")


@frozen
class T:
    name: str  # str int float bool json any list record none union
    item: "T | None" = None  # list element
    fields: tuple[tuple[str, "T"], ...] = ()  # record fields (query results)
    members: tuple["T", ...] = ()  # a union's types (a hole under `or`, see union())

    def __str__(self) -> str:
        if self.name == "list":
            return f"list[{self.item}]"
        if self.name == "record":
            return "{" + ", ".join(f"{k}: {v}" for k, v in self.fields) + "}"
        if self.name == "union":
            return "|".join(str(m) for m in self.members)
        return self.name

    def names(self) -> tuple[str, ...]:
        """The type names a value of this type may have (a union's members')."""
        return tuple(m.name for m in self.members) if self.name == "union" else (self.name,)

    def field(self, name: str) -> "T | None":
        for k, v in self.fields:
            if k == name:
                return v
        return None


STR, INT, FLOAT, BOOL, JSON, ANY, NONE = (T(n) for n in ("str", "int", "float", "bool", "json", "any", "none"))


def list_of(t: T) -> T:
    return T("list", t)


def union(*types: T) -> T:
    """A value of one of these types: a hole under `or` (`x is int or x in
    ["none"]` is int|str). Members are kept once each, in order; one member is
    itself; int with float is float (an int is a float's value)."""
    members: list[T] = []
    for t in types:
        for m in t.members if t.name == "union" else (t,):
            if m not in members:
                members.append(m)
    if FLOAT in members and INT in members:
        members.remove(INT)
    return members[0] if len(members) == 1 else T("union", members=tuple(members))


def record(**fields: T) -> T:
    return T("record", None, tuple(fields.items()))


def assignable(value: T, target: T) -> bool:
    """Can a value of type `value` be passed where `target` is expected?

    Lenient where the runtime converts losslessly (int -> float, anything ->
    str through its text, json/any unknown until run time)."""
    if target.name in ("any", "json") or value.name in ("any", "json"):
        return True
    if value.name == "union":  # every value it may hold must fit
        return all(assignable(m, target) for m in value.members)
    if target.name == "union":
        return any(assignable(value, m) for m in target.members)
    if target.name == value.name:
        if target.name == "list":
            return assignable(value.item or ANY, target.item or ANY)
        return True
    if target.name == "float" and value.name in ("int", "bool"):
        return True
    if target.name == "str" and value.name in ("int", "float", "bool"):
        return True
    return False


def of_python(v) -> T:
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int):
        return INT
    if isinstance(v, float):
        return FLOAT
    if isinstance(v, str):
        return STR
    if isinstance(v, (list, tuple)):
        items = {of_python(x) for x in v}
        return list_of(items.pop() if len(items) == 1 else ANY)
    return ANY
