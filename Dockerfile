# syntax=docker/dockerfile:1.7
#
# One image for every sentistream process:
#   docker run IMAGE                                   -> sentistream serve (HTTP 8000, gRPC 8500)
#   docker run IMAGE stream --source redis --consumer w1 --http-port 9100
#   docker run IMAGE ingest --source file --input /app/samples/posts.jsonl --loop --rate 5
#
# Runtime dependencies only (`pip install .`, never the [train] extra: no torch, no compilers).
# The default model ships inside the package; mount a model repository and set
# SENTISTREAM_MODEL_REPOSITORY=/models to serve other models (it replaces the bundled one).
# Secrets (SENTISTREAM_REDIS_URL, SENTISTREAM_AUTH_TOKEN, SENTISTREAM_X_BEARER_TOKEN) are given at
# run time through the environment or a secret store; none is in any layer of this image.
#
# Both stages use the same pinned base (a full version tag, never `latest` or `python:3`) so the
# virtualenv copied from the builder finds the same interpreter at the same path. Bump both
# tags together, deliberately (Dependabot/Renovate read these FROM lines).

# ---- builder: build the sentistream wheel, install it with its dependencies into a venv ----
FROM python:3.11.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
# Only what the wheel needs (see .dockerignore: everything else is excluded from the context).
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src

# constraints.txt pins the versions the test suite ran with; only runtime packages get installed.
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels sentistream \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/sentistream models

# ---- runtime: the interpreter, the venv, the samples; nothing else ---------------------------
FROM python:3.11.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="sentistream" \
      org.opencontainers.image.description="Real-time sentiment analysis of social-media streams" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID so Kubernetes can verify runAsNonRoot and volumes can be chowned.
RUN groupadd --system --gid 10001 sentistream \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sentistream

COPY --from=builder /opt/venv /opt/venv
# The bundled sample posts at a stable path for the compose / Kubernetes ingest demo
# (the same file is inside the package: sentistream.demo.SAMPLE_POSTS).
COPY src/sentistream/samples/posts.jsonl /app/samples/posts.jsonl

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app
USER 10001:10001

# 8000: HTTP (REST, KServe V2, TF Serving REST, /metrics); 8500: gRPC; 9100: stream worker
EXPOSE 8000 8500 9100

# Readiness of the model server (false until the model is loaded and warmed, and while
# draining). The stream worker and ingest override or disable it (see compose.yaml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SENTISTREAM_HTTP_PORT', '8000') + '/v2/health/ready', timeout=2)"]

ENTRYPOINT ["sentistream"]
CMD ["serve"]
