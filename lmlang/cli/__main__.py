"""`python -m lmlang.cli ...`, the same as the `lmlang` console script."""

from . import main

main()
