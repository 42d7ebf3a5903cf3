# trio-broker: one node, configured by environment only (docs/DEPLOY.md).
#   docker build -t trio-broker .
#   docker run -p 8080:8080 -v broker-data:/data -e BROKER_JWT_SECRET=... -e BROKER_API_KEY=... trio-broker
# The build and install steps are scripts in deploy/docker/, so a test runs the same
# steps on machines that cannot build images (tests/test_container_recipe.py).

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md config.toml LICENSE CHANGELOG.md ./
COPY broker ./broker
COPY actors ./actors
COPY deploy/docker ./deploy/docker
RUN sh deploy/docker/build-wheels.sh /src /wheels

FROM python:3.12-slim
ENV PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
COPY deploy/docker/install.sh /tmp/install.sh
RUN sh /tmp/install.sh /wheels /opt/broker \
    && rm -rf /wheels /tmp/install.sh \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin broker \
    && mkdir -p /data \
    && chown broker:broker /data

# No secret is baked in: without BROKER_JWT_SECRET / WS_AUTH_TOKEN / BROKER_API_KEY the
# broker starts and refuses every client, saying why in its log.
ENV PATH=/opt/broker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    HOST=0.0.0.0 \
    BROKER_DB_PATH=/data/broker.sqlite3

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

# /health is 200 while serving and 503 while draining; the port comes from $PORT.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"]

# SIGTERM drains: /health turns 503, clients get 1001 and reconnect elsewhere, queued
# writes are committed, then the process exits (give it [server] drain_timeout + 5 s).
STOPSIGNAL SIGTERM
CMD ["broker", "serve"]
