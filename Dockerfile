# Wicket sidecar image: slim, non-root, no build tools at run time.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin wicket \
    && mkdir -p /app && chown wicket /app
COPY --from=build /install /usr/local
COPY --chown=root:root policies /app/policies
WORKDIR /app
USER 10001
EXPOSE 8080 9090
# The admin port listens on loopback by default; expose it deliberately with --admin-listen.
ENTRYPOINT ["wicket"]
CMD ["run", "--help"]
