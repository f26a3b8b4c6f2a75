# syntax=docker/dockerfile:1
# Multi-stage: build wheels with a compiler, run on a slim image as a non-root user.

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY connectors connectors
COPY risk risk
COPY crypto crypto
COPY config config
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PAYHUB_HOME=/var/lib/payhub \
    PAYHUB_LISTEN=0.0.0.0:8443 \
    PAYHUB_OPS_LISTEN=0.0.0.0:9108
RUN groupadd --system payhub && useradd --system --gid payhub --home-dir /var/lib/payhub payhub \
    && mkdir -p /var/lib/payhub && chown payhub:payhub /var/lib/payhub
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER payhub
WORKDIR /var/lib/payhub
EXPOSE 8443 9108
# Production images take PAYHUB_DATABASE_URL (no embedded PostgreSQL) and mount real PKI at $PAYHUB_HOME/pki.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["payhub"]
CMD ["serve"]
