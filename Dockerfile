# syntax=docker/dockerfile:1.7
# The platform image: the code location gRPC server, every run and step worker, the webhook
# receiver, and (in docker compose) the Dagster webserver and daemon all run from it.
# Build: docker build -t medallion:$(git rev-parse --short HEAD) .
# No secret goes into any layer: credentials arrive at run time as environment variables or
# mounted files (docker compose `.env`, Kubernetes Secrets).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
# build: the virtualenv from the lock, the project, and the dbt manifest
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# Dependencies alone first, so this layer is rebuilt only when the lock changes. --locked fails the
# build if uv.lock is out of date; --no-default-groups leaves the dev and deploy tools out.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --locked --no-default-groups --no-install-project

COPY pyproject.toml uv.lock README.md ./
COPY dagster_project ./dagster_project
COPY dbt_project ./dbt_project

# The project itself, editable: settings.project_root() must resolve to /app, where dbt_project is.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-default-groups

# The project's modules compiled too (uv compiles site-packages only): with PYTHONDONTWRITEBYTECODE and a
# read-only /app, every process that loads the code location would compile them again.
RUN /app/.venv/bin/python -m compileall -q --invalidation-mode checked-hash dagster_project

# dagster-dbt loads dbt_project/target/manifest.json when the code location starts; build it now so
# no pod has to parse the project. Parsing opens no lake; the paths only have to be set.
RUN MEDALLION_DATA_DIR=/tmp/build \
    MEDALLION_LAKE_ROOT=/tmp/build/lake \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    /app/.venv/bin/dbt parse --project-dir dbt_project --profiles-dir dbt_project \
    && test -s dbt_project/target/manifest.json \
    && rm -rf dbt_project/logs /tmp/build

# ---------------------------------------------------------------------------------------------
# runtime: the same Python, the built /app, an unprivileged user
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="medallion" \
      org.opencontainers.image.description="Medallion lakehouse platform: Dagster code location, run workers, webhook receiver" \
      org.opencontainers.image.licenses="Apache-2.0"

# tini reaps the run subprocesses the code server starts and forwards SIGTERM to PID 1.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 medallion \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/medallion --create-home \
       --shell /usr/sbin/nologin medallion

# Code and virtualenv stay owned by root: the runtime user can read them, not change them.
COPY --from=build /app /app

# Writable places, owned by the runtime user so fresh volumes mounted there inherit it: /data is
# MEDALLION_DATA_DIR (scratch, or the lake in the chart's local-path mode; the lake is normally in
# object storage).
RUN mkdir -p /data /opt/dagster/dagster_home /opt/dagster/compute-logs \
    && chown -R 10001:10001 /data /opt/dagster

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    MEDALLION_DATA_DIR=/data \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    DBT_TARGET_PATH=/tmp/dbt/target \
    DBT_LOG_PATH=/tmp/dbt/logs

WORKDIR /app
USER 10001:10001

EXPOSE 3030 8000 3000

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "dagster_project.definitions"]
