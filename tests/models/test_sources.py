"""The model-source registry: one reading of a source string for the checker,
the compiler and the loader."""

import pytest

from lmlang.models import sources


@pytest.mark.parametrize(
    "text,kind",
    [
        ("default", "default"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "hub"),
        ("gpt2", "hub"),  # the checker accepted it, the loader did not
        ("org/name@main", "hub"),  # the loader accepted it, the checker did not
        ("org/name@refs/pr/1", "hub"),
        ("./models/mine", "folder"),
        ("/abs/folder", "folder"),
        ("~/weights", "folder"),
        ("weights/model.Q4_K_M.gguf", "gguf"),
        ("./a.GGUF", "gguf"),
        ("not a hub id", None),
        ("", None),
        ("   ", None),
    ],
)
def test_classify(text, kind):
    assert sources.classify(text) == kind


def test_checker_and_loader_agree_on_hub_ids(tmp_path, monkeypatch):
    import lmlang
    from lmlang.errors import ModelNotFoundError
    from lmlang.models import loader

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for spec in ("gpt2", "org/name@main"):
        lmlang.compile(
            f'model m = "{spec}"\nquery q(x: str) using m {{ "{{x}} [a]" where a in ["y", "n"] }}',
            str(tmp_path / "s.lm"),
            base_dir=tmp_path,
        )  # the checker accepts it
        with pytest.raises(ModelNotFoundError, match="local Hugging Face cache"):
            loader.resolve_model(spec, tmp_path)  # the loader reads it as a hub id


def test_every_kind_is_registered():
    for text in ("default", "org/x", "./f", "m.gguf"):
        assert sources.classify(text) in sources.SOURCE_KINDS
