#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests against a real Apache
# Kafka broker that the session starts itself (minigit-server kafka start).
# Extra arguments go to pytest, e.g. scripts/test.sh -k seed -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=15 "$@"
