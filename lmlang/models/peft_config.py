"""Reading a PEFT adapter_config.json as PEFT does: the rules the adapter
loader (models/adapters.py) and the LoRA merger (merge/lora.py) share, in one
torch-free place so the two never read one config differently.
"""

from __future__ import annotations

import re
from typing import Any, Mapping


def pattern_value(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """The value `rank_pattern` / `alpha_pattern` give a module, else `default`.

    PEFT's rule (peft.utils.other.get_pattern_key): the first pattern, in the
    config's order, that matches a suffix of the module name at a dot
    boundary. The pattern is a regex and is grouped whole, so an alternation
    (`q_proj|v_proj`) applies to every branch, as in PEFT.
    """
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default
