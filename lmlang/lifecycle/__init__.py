"""The specialization lifecycle in the language: data sets (`data`), their
selection (ZIP-FIT by gzip, or by embedding), generation (rows a model
writes: generate.py), evaluations (`eval`) and
exports (`export`). `tables.py` is torch-free (the checker reads it); the
other modules run only when a command (`lmlang eval`, `export`, `data show`)
asks for them."""
