#!/usr/bin/env bash
# The whole test suite: lint and format checks (ruff), unit tests, and
# integration tests against a real Apache Kafka broker that the session starts
# itself (minigit-server kafka start).
#   scripts/test.sh            everything
#   scripts/test.sh --unit     lint and unit tests only: no Java, Maven or Kafka needed
# Further arguments go to pytest, e.g. scripts/test.sh -k seed -x
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--unit" ]; then
    shift
    bash scripts/setup.sh --no-kafka
    set -- tests/unit "$@"
else
    bash scripts/setup.sh
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=15 "$@"
