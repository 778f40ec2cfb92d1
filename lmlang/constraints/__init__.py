"""Constraints: lmlang's constraint IR (spec.py, torch-free) and its lowering
to token masks (the other modules, which import the tokenizer/backends lazily)."""
