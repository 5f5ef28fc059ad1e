# Sourced by the launchers (never run on its own): sets PYTHON to an interpreter that imports cst_dist and torch.
# Order: $PYTHON as given; the checkout's .venv/bin/python (what `make install` builds); python on PATH; python3.
set -euo pipefail
if [[ -z "${PYTHON:-}" ]]; then
  _repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ -x "$_repo/.venv/bin/python" ]]; then PYTHON=$_repo/.venv/bin/python
  elif command -v python >/dev/null 2>&1; then PYTHON=python
  else PYTHON=python3; fi
fi
"$PYTHON" -c "import cst_dist, torch" 2>/dev/null || {
  echo "$(basename "$0"): $PYTHON cannot import cst_dist and torch: run \`make install\`, activate the venv, or set PYTHON" >&2
  exit 2
}
