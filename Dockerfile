# payhub image: a venv built in one stage, copied onto a clean copy of the same base, run as a non-root user.
#
#   docker build -t payhub .                                  # real users: official python:3.11-slim base
#   docker build --build-arg BASE=payhub-base:bookworm ...    # any base providing python3 (>= 3.11) with venv
#
# Needs BuildKit (DOCKER_BUILDKIT=1 on Docker 20.10/buildx, the default since 23.0). No `# syntax=` line on purpose:
# the built-in Dockerfile frontend does everything here, so a build never has to pull a frontend image.
#
# Optional build secrets, used only by the pip step and never stored in a layer:
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt   CA bundle for a TLS-intercepting proxy or private index
#   --secret id=pip,src=<pip.conf>                          pip config (index-url, credentials) for a private index
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# Runtime files only: the packages, the dev-default config they ship with, and the project metadata.
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY connectors connectors
COPY risk risk
COPY crypto crypto
COPY config config
RUN --mount=type=secret,id=ca --mount=type=secret,id=pip \
    set -e; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    if [ -s /run/secrets/pip ]; then export PIP_CONFIG_FILE=/run/secrets/pip; fi; \
    /opt/venv/bin/python -m pip install . \
    && /opt/venv/bin/payhub --help > /dev/null

FROM ${BASE} AS runtime
# A fixed numeric uid/gid, so orchestrators can check runAsNonRoot and mounted secrets can be chowned to it.
ARG PAYHUB_UID=10001
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PAYHUB_HOME=/var/lib/payhub \
    PAYHUB_LISTEN=0.0.0.0:8443 \
    PAYHUB_OPS_LISTEN=0.0.0.0:9108
RUN groupadd --system --gid "${PAYHUB_UID}" payhub \
    && useradd --system --uid "${PAYHUB_UID}" --gid payhub --home-dir /var/lib/payhub \
       --shell /usr/sbin/nologin payhub \
    && mkdir -p /var/lib/payhub \
    && chown payhub:payhub /var/lib/payhub
COPY --from=build /opt/venv /opt/venv
USER ${PAYHUB_UID}:${PAYHUB_UID}
WORKDIR /var/lib/payhub
EXPOSE 8443 9108
# Production: set PAYHUB_DATABASE_URL (the image has no embedded PostgreSQL), mount the PKI read-only at
# $PAYHUB_HOME/pki (readable by uid ${PAYHUB_UID}), and PAYHUB_CONFIG=<mounted toml> for real tenants/connectors.
# The healthcheck follows PAYHUB_OPS_LISTEN (a wildcard address is probed on loopback).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import os,sys,urllib.request as u; h,_,p=os.environ.get('PAYHUB_OPS_LISTEN','127.0.0.1:9108').rpartition(':'); h=h.strip('[]'); h={'':'127.0.0.1','0.0.0.0':'127.0.0.1','::':'::1'}.get(h,h); h='['+h+']' if ':' in h else h; sys.exit(0 if u.urlopen('http://%s:%s/healthz' % (h,p), timeout=2).status == 200 else 1)"
ENTRYPOINT ["payhub"]
CMD ["serve"]
