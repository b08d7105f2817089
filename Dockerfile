# syntax=docker/dockerfile:1
# The tonebridge-dr image: the operator (`tonebridge-dr operator`, the chart's Deployment)
# and the runner every backup / restore / restore-test Job runs (`tonebridge-dr <verb>`).
#
#   make image                      # docker build -t tonebridge-dr:dev .  (needs Docker)
#   make image IMAGE=registry.example.com/tonebridge-dr:0.1.0
#
# Tools the runner calls (tests/deploy/test_dockerfile.py checks that every one it
# probes is installed here, and the last RUN below fails the build if one is missing):
# PostgreSQL client AND server binaries of every supported major (pg_dump must be at
# least as new as the server; PITR, physical restores and restore tests run a private
# postgres), Redis (redis-server for snapshot restores and restore tests,
# redis-check-rdb), GnuPG (OpenPGP encryption), zstd, git.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/tonebridge-dr \
 && /opt/tonebridge-dr/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/tonebridge-dr/bin/pip install --no-cache-dir /src
# The compiled front door of wal-push / wal-fetch, next to the venv's python (where
# `restore postgres` looks for it; archive_command may name it too: docs/wal-archiving.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && cc -O2 -Wall -Wextra -Werror -std=c11 -o /opt/tonebridge-dr/bin/tonebridge-dr-walfast \
      operator/tonebridge_dr/runner/engines/postgres/wal/walfast.c \
 && rm -rf /var/lib/apt/lists/*

FROM ${PYTHON_IMAGE}
# Supported PostgreSQL majors (the runner picks /usr/lib/postgresql/<major>/bin matching
# the server it talks to, else the newest).
ARG PG_MAJORS="14 15 16 17 18"
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/tonebridge-dr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
      https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    # postgresql-common would create a cluster for every server package: turn that off
    # before installing them (as the official postgres image does).
    apt-get install -y --no-install-recommends postgresql-common; \
    sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf; \
    grep -q '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf; \
    packages="gnupg zstd git redis-server redis-tools tzdata"; \
    for major in ${PG_MAJORS}; do \
      packages="$packages postgresql-client-${major} postgresql-${major}"; \
    done; \
    apt-get install -y --no-install-recommends $packages; \
    apt-get purge -y --auto-remove curl; \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/tonebridge-dr /opt/tonebridge-dr
# Numeric, non-root: the chart and every runner pod set runAsNonRoot.
RUN useradd --uid 65532 --user-group --home-dir /home/tonebridge --create-home tonebridge
USER 65532:65532
WORKDIR /home/tonebridge
# Fails the build when a tool the runner needs is missing (keep in sync with the test).
RUN set -eu; \
    for major in ${PG_MAJORS}; do \
      for tool in pg_dump pg_dumpall pg_restore psql pg_basebackup pg_receivewal \
                  pg_controldata pg_waldump initdb pg_ctl postgres; do \
        test -x "/usr/lib/postgresql/${major}/bin/${tool}" \
          || { echo "missing /usr/lib/postgresql/${major}/bin/${tool}" >&2; exit 1; }; \
      done; \
    done; \
    for tool in redis-server redis-check-rdb redis-cli gpg zstd git tonebridge-dr \
                tonebridge-dr-walfast; do \
      command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; \
    done; \
    tonebridge-dr --help >/dev/null
ENTRYPOINT ["tonebridge-dr"]
CMD ["operator"]
