# The minigit server (`minigit-server`), as run by docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY minigit/ minigit/
COPY server/ server/
RUN pip install . \
    && useradd --create-home --uid 10001 minigit \
    && mkdir -p /data \
    && chown minigit:minigit /data

USER minigit
WORKDIR /home/minigit
VOLUME ["/data"]

CMD ["minigit-server", "start", "--replicas", "3", "--bootstrap", "kafka:19092", "--data-dir", "/data"]
