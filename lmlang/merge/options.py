"""Torch-free option schemas of the merge methods, for the checker.

The checker validates `merge <method> { ... }` blocks at check time, before any
weights exist, so this module imports nothing heavy (a subprocess test holds
it to that). `methods.py` implements the same names; a test keeps the two in
step.

Defaults follow the reference implementations: mergekit 0.1.5 for every
method but pcb, whose defaults come from the official PCB-merging code.
Where the lmlang mode differs (for example `weight`, which mergekit requires
but lmlang defaults to 1.0), the difference is in `OptionSpec.doc`.

A value may be a scalar, or, for options marked `gradient`, a mergekit
gradient list (`[0, 0.5, 1]`, interpolated over the layers) or a list of
`{filter: "self_attn", value: ...}` conditions matched by name substring.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..frozen import frozen, replace
from ..problems import Problem
from ..suggest import did_you_mean


@frozen
class OptionSpec:
    type: str  # "float" | "int" | "bool"
    default: Any  # None: required
    min: float | None = None
    max: float | None = None
    per_model: bool = False
    doc: str = ""
    gradient: bool = True  # accepts gradient lists / filtered conditions

    @property
    def required(self) -> bool:
        return self.default is None


@frozen
class MethodInfo:
    name: str
    base: str  # "required" | "optional" | "ignored"
    min_models: int
    max_models: int | None
    doc: str
    options: Mapping[str, OptionSpec]


def _weight(doc_extra: str = "") -> OptionSpec:
    return OptionSpec(
        "float",
        1.0,
        per_model=True,
        doc="weight of this model's contribution (mergekit requires it; lmlang defaults to 1.0)" + doc_extra,
    )


def _density(default: float = 1.0, doc: str = "fraction of each delta kept (1.0 keeps all)") -> OptionSpec:
    return OptionSpec("float", default, 0.0, 1.0, per_model=True, doc=doc)


def _gta(normalize: bool, rescale: bool, *, sparse: str | None, consensus: bool) -> dict[str, OptionSpec]:
    opts: dict[str, OptionSpec] = {
        "weight": _weight(),
        "density": _density(
            doc="fraction of each delta kept"
            + ("" if sparse else " (accepted for mergekit compatibility; task_arithmetic does not sparsify)")
        ),
        "lambda": OptionSpec("float", 1.0, doc="scale of the merged delta"),
        "normalize": OptionSpec(
            "bool",
            normalize,
            doc="divide the summed delta by the summed weights" + (" of agreeing models" if consensus else ""),
        ),
        "rescale": OptionSpec(
            "bool", rescale, doc="rescale each sparsified delta (mergekit: to its L1 norm; lmlang DARE: by 1/density)"
        ),
        "int8_mask": OptionSpec("bool", False, doc="store sign masks as int8 (memory only; results are identical)"),
    }
    if sparse == "random":
        opts["seed"] = OptionSpec(
            "int",
            0,
            0,
            None,
            doc="seed of the DARE drop masks (one CPU generator per tensor and model)",
            gradient=False,
        )
    if sparse == "outliers":
        opts["gamma"] = OptionSpec(
            "float", 0.01, 0.0, 1.0, per_model=True, doc="fraction of largest-magnitude outliers removed"
        )
    return opts


METHODS: dict[str, MethodInfo] = {
    "linear": MethodInfo(
        "linear",
        "ignored",
        1,
        None,
        "weighted average of the models",
        {
            "weight": _weight(),
            "normalize": OptionSpec("bool", True, doc="divide by the sum of the weights"),
        },
    ),
    "task_arithmetic": MethodInfo(
        "task_arithmetic",
        "required",
        1,
        None,
        "base + lambda * sum(weight_i * delta_i)",
        _gta(False, False, sparse=None, consensus=False),
    ),
    "ties": MethodInfo(
        "ties",
        "required",
        1,
        None,
        "trim by magnitude, elect signs, disjoint weighted mean",
        _gta(True, False, sparse="magnitude", consensus=True),
    ),
    "dare_linear": MethodInfo(
        "dare_linear",
        "required",
        1,
        None,
        "random drop and rescale, then task arithmetic",
        _gta(False, True, sparse="random", consensus=False),
    ),
    "dare_ties": MethodInfo(
        "dare_ties",
        "required",
        1,
        None,
        "random drop and rescale, then TIES sign consensus",
        _gta(False, True, sparse="random", consensus=True),
    ),
    "breadcrumbs": MethodInfo(
        "breadcrumbs",
        "required",
        1,
        None,
        "drop large outliers and small values, then task arithmetic",
        _gta(False, False, sparse="outliers", consensus=False),
    ),
    "breadcrumbs_ties": MethodInfo(
        "breadcrumbs_ties",
        "required",
        1,
        None,
        "breadcrumbs sparsification with TIES sign consensus",
        _gta(False, False, sparse="outliers", consensus=True),
    ),
    "slerp": MethodInfo(
        "slerp",
        "required",
        2,
        2,
        "spherical interpolation between the base and one other model",
        {
            "t": OptionSpec(
                "float",
                None,
                0.0,
                1.0,
                doc="interpolation factor: 0 is the base, 1 the other model; a list is a per-layer gradient",
            ),
            "dot_threshold": OptionSpec(
                "float",
                0.9995,
                0.0,
                1.0,
                doc="above this |cos| the tensors are treated as parallel and lerped (lmlang extension)",
            ),
        },
    ),
    "model_stock": MethodInfo(
        "model_stock",
        "required",
        3,
        None,
        "interpolate the models' mean towards the base by their deltas' mean cosine",
        {
            "filter_wise": OptionSpec("bool", False, doc="one ratio per output row instead of per tensor"),
        },
    ),
    "pcb": MethodInfo(
        "pcb",
        "required",
        1,
        None,
        "parameter competition balancing (official PCB-merging code, applied per tensor)",
        {
            "weight": _weight(" (the official code's per-task lambda)"),
            "density": OptionSpec(
                "float",
                0.1,
                0.0,
                1.0,
                doc="fraction r of each task vector kept by its balancing score (the official pcb_ratio)",
            ),
            "lambda": OptionSpec("float", 1.0, doc="scale of the merged task vector"),
        },
    ),
    "tsv": MethodInfo(
        "tsv",
        "required",
        1,
        None,
        "task singular vectors: each delta's top singular vectors, "
        "decorrelated across models, keeping every model's singular values (TSV-M)",
        {
            "weight": _weight(),
            "rank_fraction": OptionSpec(
                "float",
                0.0,
                0.0,
                1.0,
                doc="fraction of each matrix's rank kept per model "
                "(0, the default, means 1/number of models, as in the paper)",
            ),
            "lambda": OptionSpec("float", 1.0, doc="scale of the merged delta"),
        },
    ),
}

# Options a script's merge step takes besides its method's: how the result
# is computed and stored. The checker validates them, the builder passes them
# to merge_models / merge_loras; neither is a method option.
STEP_OPTIONS = {
    "compat": "lmlang (default) or mergekit: which semantics the method follows",
    "dtype": "output dtype: float32, bfloat16 or float16 (default: the base model's)",
    "rank": "adapter merges only: rank of the merged LoRA (default: the sum of the input ranks)",
}
MERGE_COMPAT = ("lmlang", "mergekit")
OUTPUT_DTYPES = ("float32", "bfloat16", "float16")

_VALID_TYPES = {"float": (int, float), "int": (int,), "bool": (bool,)}


def method_names() -> list[str]:
    return list(METHODS)


def unknown_method_message(name: str) -> str:
    return Problem(f"unknown merge method '{name}'", did_you_mean(name, METHODS)).text


def method_info(method: str) -> MethodInfo:
    try:
        return METHODS[method]
    except KeyError:
        raise KeyError(unknown_method_message(method)) from None


def method_options(method: str) -> dict[str, OptionSpec]:
    return dict(method_info(method).options)


def _scalar_problem(name: str, spec: OptionSpec, value: Any) -> str:
    if spec.type != "bool" and isinstance(value, bool):
        return f"option '{name}' must be a {spec.type}, got {value!r}"
    if not isinstance(value, _VALID_TYPES[spec.type]):
        return f"option '{name}' must be a {spec.type}, got {value!r}"
    if spec.type != "bool":
        if isinstance(value, float) and not math.isfinite(value):
            # NaN compares false with every bound, so it would pass them and
            # write an all-NaN model; inf scales deltas to inf.
            return f"option '{name}' must be a finite number, got {value!r}"
        if spec.min is not None and value < spec.min:
            return f"option '{name}' must be >= {spec.min}, got {value!r}"
        if spec.max is not None and value > spec.max:
            return f"option '{name}' must be <= {spec.max}, got {value!r}"
    return ""


def check_value(name: str, spec: OptionSpec, value: Any) -> list[str]:
    """What is wrong with one option value (scalar, gradient list or filtered
    conditions), as messages without location; [] if nothing."""
    if isinstance(value, (list, tuple)):
        if not spec.gradient:
            return [f"option '{name}' takes a single value, not a list"]
        if not value:
            return [f"option '{name}' is an empty list"]
        if all(isinstance(v, Mapping) for v in value):
            problems: list[str] = []
            for cond in value:
                extra = set(cond) - {"filter", "value"}
                if extra or "value" not in cond:
                    problems.append(f"option '{name}': each condition needs 'value' and an optional 'filter'")
                    continue
                if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                    problems.append(f"option '{name}': a filter must be a string")
                problems += check_value(name, spec, cond["value"])
            return problems
        if any(isinstance(v, Mapping) for v in value):
            return [f"option '{name}' mixes conditions and plain values"]
        return [m for m in (_scalar_problem(name, spec, v) for v in value) if m]
    if isinstance(value, Mapping):
        if set(value) <= {"filter", "value"} and "value" in value:
            return check_value(name, spec, [value])
        return [f"option '{name}' must be a {spec.type}, got a mapping"]
    problem = _scalar_problem(name, spec, value)
    return [problem] if problem else []


def option_problems(
    method: str,
    global_opts: Mapping[str, Any] | None,
    per_model_opts: Sequence[Mapping[str, Any]] | None = None,
    *,
    compat: str = "lmlang",
    n_models: int | None = None,
    has_base: bool | None = None,
) -> list[Problem]:
    """Every problem with a merge's options (empty list: fine). A problem
    about one model's entry has `model` set (its position in
    per_model_opts); one about an option has `option` set.

    Per-model options may also be given globally, as the default for every
    model (mergekit's precedence: a model's own value wins). Global-only
    options given on a model are an error.
    """
    if method not in METHODS:
        return [Problem(f"unknown merge method '{method}'", did_you_mean(method, METHODS), "unknown-method")]
    info = METHODS[method]
    opts = info.options
    global_opts = dict(global_opts or {})
    per_model_opts = [dict(p or {}) for p in (per_model_opts or [])]
    problems: list[Problem] = []
    for name, value in global_opts.items():
        if name not in opts:
            problems.append(_unknown(method, name, opts, None))
            continue
        problems += [Problem(m, code="bad-value", option=name) for m in check_value(name, opts[name], value)]
    for i, model_opts in enumerate(per_model_opts):
        for name, value in model_opts.items():
            if name not in opts:
                problems.append(_unknown(method, name, opts, i))
            elif not opts[name].per_model:
                problems.append(
                    Problem(
                        f"option '{name}' of '{method}' applies to the whole merge, not to one model",
                        code="not-per-model",
                        option=name,
                        model=i,
                    )
                )
            else:
                problems += [
                    Problem(m, code="bad-value", option=name, model=i) for m in check_value(name, opts[name], value)
                ]
    problems += _missing(method, info, global_opts, per_model_opts, compat)
    if n_models is not None:
        problems += _count_problems(method, info, n_models, has_base)
    return problems


def validate_options(
    method: str,
    global_opts: Mapping[str, Any] | None,
    per_model_opts: Sequence[Mapping[str, Any]] | None = None,
    *,
    compat: str = "lmlang",
    n_models: int | None = None,
    has_base: bool | None = None,
) -> list[str]:
    """`option_problems` as one line each (`model 2: ...; did you mean 'x'?`),
    for library callers that raise them as one exception."""
    return [
        p.text
        for p in option_problems(
            method, global_opts, per_model_opts, compat=compat, n_models=n_models, has_base=has_base
        )
    ]


def _unknown(method: str, name: str, opts: Mapping[str, OptionSpec], model: int | None) -> Problem:
    return Problem(
        f"unknown option '{name}' for merge method '{method}'",
        did_you_mean(name, opts),
        "unknown-option",
        option=name,
        model=model,
    )


def _missing(method: str, info: MethodInfo, global_opts: dict, per_model_opts: list, compat: str) -> list[Problem]:
    problems = []
    for name, spec in info.options.items():
        if spec.per_model:
            required = spec.required or (compat == "mergekit" and name == "weight" and method != "pcb")
            if required and name not in global_opts:
                problems += [
                    Problem(
                        f"missing option '{name}' (required by {method} in {compat} mode)",
                        code="missing-option",
                        option=name,
                        model=i,
                    )
                    for i, model_opts in enumerate(per_model_opts)
                    if name not in model_opts
                ]
        elif spec.required and name not in global_opts:
            problems.append(
                Problem(f"missing option '{name}' for merge method '{method}'", code="missing-option", option=name)
            )
    return problems


def _count_problems(method: str, info: MethodInfo, n_models: int, has_base: bool | None) -> list[Problem]:
    # Counts of inputs include the base (mergekit's contract).
    problems = []
    total = n_models + (1 if has_base and info.base != "ignored" else 0)
    if info.base == "required" and has_base is False:
        problems.append(Problem(f"merge method '{method}' needs a base model", code="needs-base"))
    if total < info.min_models:
        problems.append(
            Problem(
                f"merge method '{method}' needs at least {info.min_models} models including the base, got {total}",
                code="model-count",
            )
        )
    if info.max_models is not None and total > info.max_models:
        problems.append(
            Problem(
                f"merge method '{method}' takes at most {info.max_models} models including the base, got {total}",
                code="model-count",
            )
        )
    return problems


# ---- adapter merges ----


def first_adapter_is_base(method: str) -> bool:
    """In an adapter merge every input is a delta of one shared base, so the
    base is the zero delta, except for two-model methods (slerp), which
    interpolate between two inputs: there the first adapter plays the base."""
    info = METHODS[method]
    return info.base == "required" and info.max_models == 2


def adapter_merge_problems(
    method: str,
    global_opts: Mapping[str, Any] | None,
    per_adapter_opts: Sequence[Mapping[str, Any]],
    *,
    compat: str = "lmlang",
    n_adapters: int | None = None,
) -> list[Problem]:
    """`option_problems` for a merge of LoRA adapters (`model` indexes the
    adapters as listed). n_adapters: how many were listed, when some listed
    entries have no options to pass (default: len(per_adapter_opts))."""
    if method not in METHODS:
        return option_problems(method, global_opts)
    skip = int(first_adapter_is_base(method))
    n = len(per_adapter_opts) if n_adapters is None else n_adapters
    problems = option_problems(
        method,
        global_opts,
        list(per_adapter_opts)[skip:],
        compat=compat,
        n_models=n - skip,
        has_base=METHODS[method].base != "ignored",
    )
    return [p if p.model is None else replace(p, model=p.model + skip) for p in problems]


# ---- the merge step's own options ----


def step_option_problems(given: Mapping[str, Any], *, adapters: bool) -> list[Problem]:
    """Problems with the STEP_OPTIONS a script's merge block gives (compat,
    dtype, rank; other keys are ignored here: they are the method's)."""
    problems = []
    if "compat" in given and given["compat"] not in MERGE_COMPAT:
        problems.append(
            Problem(
                f"unknown merge compat {given['compat']!r}",
                did_you_mean(str(given["compat"]), MERGE_COMPAT) or "compat: lmlang or mergekit",
                "bad-value",
                option="compat",
            )
        )
    if "dtype" in given and given["dtype"] not in OUTPUT_DTYPES:
        problems.append(
            Problem(
                f"unknown merge dtype {given['dtype']!r}",
                did_you_mean(str(given["dtype"]), OUTPUT_DTYPES, known="dtype"),
                "bad-value",
                option="dtype",
            )
        )
    if "rank" in given:
        rank = given["rank"]
        if not adapters:
            problems.append(
                Problem(
                    "rank applies to adapter merges (the rank of the merged LoRA)",
                    "a model merge writes full weights; drop `rank`",
                    "not-applicable",
                    option="rank",
                )
            )
        elif not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            problems.append(Problem(f"rank must be a positive integer, got {rank!r}", code="bad-value", option="rank"))
    return problems


# ---- per-tensor resolution of gradients and filters (mergekit semantics) ----


def resolve_setting(value: Any, tensor_name: str, t: float, type_: str = "float") -> Any:
    """Evaluate a scalar / gradient list / filtered conditions for one tensor.

    Matches mergekit's `evaluate_setting`: conditions apply in order, the first
    whose filter is None, "*" or a substring of the tensor name wins; a numeric
    list is interpolated at t (in Python floats) over its evenly spaced points.
    Returns None when no condition matches.
    """
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        if all(not isinstance(v, Mapping) for v in value):
            values = [_cast(v, type_) for v in value]
            if type_ == "bool" or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(values) - 1)
            i0 = int(scaled)
            i1 = min(len(values) - 1, i0 + 1)
            frac = scaled - i0
            return _cast((1 - frac) * values[i0] + frac * values[i1], type_)
        for cond in value:
            filt = cond.get("filter")
            if filt is None or filt == "*" or (tensor_name and filt in tensor_name):
                return resolve_setting(cond["value"], tensor_name, t, type_)
        return None
    return _cast(value, type_)


def _cast(value: Any, type_: str) -> Any:
    if type_ == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_ == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
