#!/usr/bin/env bash
# Installs what the demo and the tests need, idempotently: a virtual environment
# in .venv with minigit (and its test extra), and the Apache Kafka jars (Maven
# Central, cached in ~/.cache/minigit); and for the Spark jobs (minigit-server
# audit, activity) the spark extra (PySpark) and Spark's Kafka connector jars
# (Maven Central, same cache). Needs Python >= 3.11; the jars need Java 17+ and
# Maven; --no-kafka skips the jars and PySpark (enough for unit tests).
set -euo pipefail
cd "$(dirname "$0")/.."

fetch_kafka=yes
[ "${1:-}" = "--no-kafka" ] && fetch_kafka=no

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: minigit needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$python" -m venv .venv
fi
stamp=.venv/.minigit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing minigit and its test tools into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
if [ "$fetch_kafka" = yes ]; then
    spark_stamp=.venv/.minigit-spark-installed
    if [ ! -f "$spark_stamp" ] || [ pyproject.toml -nt "$spark_stamp" ]; then
        echo "setup: installing the spark extra (PySpark) into .venv" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,spark]'
        touch "$spark_stamp"
    fi
    .venv/bin/minigit-server kafka fetch >&2
    .venv/bin/python -m minigit_server.sparkjobs.runtime fetch >&2
fi
