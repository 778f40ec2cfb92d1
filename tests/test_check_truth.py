"""What `check` accepts runs: the forms docs/language.md documents work at
run time, and what cannot run is a check error (tiny models)."""
import pytest

import lmlang
from lmlang.errors import LmlangError


def test_documented_slerp_of_base_and_base_plus_adapter_runs(tiny_model_dir, tmp_path, lmlang_home):
    from test_adapters import make_lora

    lora = make_lora(tiny_model_dir, tmp_path / "polite", seed=1)
    src = f'''
model base = "{tiny_model_dir}"
adapter polite = lora "{lora}"
model halfway = merge slerp {{ base: base, models: [base + polite], t: 0.5 }}
query q(x: str) using halfway {{ "{{x}} [v]" where v in ["yes", "no"] }}
flow {{ r = q("hi") emit v = r.v }}
'''
    assert lmlang.compile(src).run()["v"] in ("yes", "no")


def test_distribution_after_another_hole_is_a_check_error():
    src = '''
model base = default
query q() using base {
    "First [a] then [b]"
    where a in ["x", "y"]
    distribution b in ["yes", "no"]
}
'''
    with pytest.raises(LmlangError) as info:
        lmlang.compile(src)
    d = info.value.diagnostics[0]
    assert "only hole" in d.message and d.span.line == 6
