"""Models: resolving a script's `model` spec to local weights (bundled default,
Hugging Face cache, folders, GGUF files) and loading them; adapters, merges,
routers and fusion build on top.

Import the submodules you need (`lmlang.models.loader`); this package imports
nothing itself so that compiling a script never pulls in torch.
"""
