# Wicket image: slim, non-root, read-only root filesystem friendly.
#
#   docker build -t wicket .                  the sidecar (default target)
#   docker build -t wicket:stdio --target stdio .   plus Node.js (npx) and uv (uvx) for stdio MCP servers
#
# Base images are pinned by the digest of their multi-platform index (docker-library/repo-info):
# python:3.11-slim-trixie (Python 3.11.15) and node:22-trixie-slim (Node.js 22.23.2). Bump them together
# with a reviewed change; `docker buildx imagetools inspect python:3.11-slim-trixie` shows the current one.
# 3.11, not 3.12: CPython 3.11 runs Wicket's own per-call work (the checker, audit, credential, screen)
# 25-40% cheaper than 3.12 and 3.13 on the same machine (docs/performance.md, sixth round). 3.11 has
# upstream security support until 2027-10; move to a newer minor when it measures at least as fast.

FROM python:3.11-slim-trixie@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install .

FROM node:22-trixie-slim@sha256:c5849ff9c9ebcd66615412f0b548ca5b8ecaef84003dc9ac2e077ebe46aaa3f6 AS node

FROM python:3.11-slim-trixie@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff AS base
# State, the audit log, temporary files (the stdio bridge's socket) and caches all live under
# /var/lib/wicket, the one declared volume; nothing else is written, so --read-only works.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/wicket \
    TMPDIR=/var/lib/wicket \
    WICKET_AUDIT_LOG=/var/lib/wicket/audit.jsonl \
    WICKET_HEALTH_LISTEN=0.0.0.0:9091
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/wicket --shell /usr/sbin/nologin wicket \
    && mkdir -p /var/lib/wicket \
    && chown 10001:10001 /var/lib/wicket \
    && chmod 0700 /var/lib/wicket
COPY --from=build /install /usr/local
# The default policies ship inside the package (proxy/data); mount your own and pass --policy.
WORKDIR /app
VOLUME ["/var/lib/wicket"]
# 8080: MCP data port. 9091: /healthz, /readyz, /metrics. The admin port (9090, /v1 and /console)
# stays on loopback unless you pass --admin-listen.
EXPOSE 8080 9091
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/healthz', timeout=2)"]
USER 10001:10001
ENTRYPOINT ["wicket"]
# With no arguments: the bundled demo (a demo MCP server behind Wicket). Production:
#   docker run ... wicket run --upstream URL --policy FILE   or   ... wicket run --policy FILE -- CMD ARG...
CMD ["demo", "--listen", "0.0.0.0:8080"]

# Wicket plus Node.js (npx) and uv (uvx), for stdio MCP servers: wicket run -- npx -y @scope/server
FROM base AS stdio
USER 0
# libstdc++6 for the node binary; Debian's security updates keep it current, so it is not version-pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libstdc++6 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && pip install --no-cache-dir uv==0.13.8
USER 10001:10001

FROM base AS runtime
