#!/usr/bin/env bash
# `make docker-test`: build the payhub image and run it for real, on this machine, with no image registry.
#
#   1. Debian's docker.io and debootstrap, installed with apt-get when missing (needs root).
#   2. A Docker daemon: the running one, or `dockerd --storage-driver=vfs` started here and stopped at the end.
#   3. Base image payhub-base:bookworm (debootstrap minbase + python3, python3-venv, ca-certificates), built
#      once: the root filesystem is cached as var/docker/payhub-base-bookworm.tar and re-imported when the
#      daemon lost it.
#   4. The image from ./Dockerfile with --build-arg BASE=payhub-base:bookworm, --network host, and this
#      machine's CA bundle and pip index passed as BuildKit secrets (nothing of them lands in a layer).
#   5. A container on --network host, non-default ports, a fresh database on the machine's PostgreSQL and a
#      dev PKI made on the host, mounted read-only. Checks: /healthz, GET /v1/ping over mTLS (tenant acme),
#      Docker's health status turns healthy, the logs are JSON lines only, a clean exit on `docker stop`.
#
# Environment (all optional): PAYHUB_DOCKER_IMAGE (payhub:docker-test), PAYHUB_DOCKER_BASE
# (payhub-base:bookworm), PAYHUB_DOCKER_API_PORT (18443), PAYHUB_DOCKER_OPS_PORT (19108),
# PAYHUB_DOCKER_PG (postgresql://postgres@127.0.0.1:5432/postgres: a server where we may CREATE DATABASE; when
# that default does not answer, or with PAYHUB_DOCKER_PG=embedded, an embedded pgserver on a Unix socket),
# DEBIAN_MIRROR (http://deb.debian.org/debian), VENV (.venv), PAYHUB_DOCKER_NO_CACHE=1 (build without the
# layer cache, to measure a full build).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

IMAGE=${PAYHUB_DOCKER_IMAGE:-payhub:docker-test}
BASE=${PAYHUB_DOCKER_BASE:-payhub-base:bookworm}
API_PORT=${PAYHUB_DOCKER_API_PORT:-18443}
OPS_PORT=${PAYHUB_DOCKER_OPS_PORT:-19108}
PG_DEFAULT_URL=postgresql://postgres@127.0.0.1:5432/postgres
PG_ADMIN_URL=${PAYHUB_DOCKER_PG:-$PG_DEFAULT_URL}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
VENV_BIN=$ROOT/${VENV:-.venv}/bin
CACHE=$ROOT/var/docker
BASE_TAR=$CACHE/payhub-base-bookworm.tar
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
CONTAINER_UID=10001   # Dockerfile's PAYHUB_UID
RUN_ID=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
CONTAINER=payhub-docker-test-$RUN_ID
DB_NAME=payhub_docker_$RUN_ID

say() { printf 'docker-test: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- clean-up (runs on every exit)
STARTED_DOCKERD_PID=""
DB_CREATED=""
EMBEDDED_PID=""
WORK=""
cleanup() {
  local rc=$?
  set +e
  if [[ -n "${DOCKER:-}" ]] && "$DOCKER" container inspect "$CONTAINER" > /dev/null 2>&1; then
    if (( rc != 0 )); then
      say "container logs (last 40 lines):"
      "$DOCKER" logs --tail 40 "$CONTAINER" 2>&1 | sed 's/^/  | /' >&2
    fi
    "$DOCKER" rm -f "$CONTAINER" > /dev/null 2>&1
  fi
  if [[ -n "$DB_CREATED" ]]; then
    psql "$PG_ADMIN_URL" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" > /dev/null 2>&1 \
      || say "could not drop database $DB_NAME"
  fi
  if [[ -n "$EMBEDDED_PID" ]]; then
    kill "$EMBEDDED_PID" 2> /dev/null
    wait "$EMBEDDED_PID" 2> /dev/null
  fi
  [[ -n "$WORK" ]] && rm -rf "$WORK"
  if [[ -n "$STARTED_DOCKERD_PID" ]]; then
    # Our daemon, on vfs (a full copy per layer): drop the build stage's cache, about 1 GB per build.
    "$DOCKER" builder prune -f > /dev/null 2>&1
    say "stopping the dockerd this run started (pid $STARTED_DOCKERD_PID)"
    kill "$STARTED_DOCKERD_PID" 2> /dev/null
    for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD_PID" 2> /dev/null || break; sleep 1; done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$CACHE"

# ---------------------------------------------------------------- 1. packages
need_pkgs=()
# Debian's client (/usr/bin/docker, from docker.io) speaks BuildKit with DOCKER_BUILDKIT=1 without buildx.
[[ -x /usr/bin/docker ]] || need_pkgs+=(docker.io)
command -v dockerd > /dev/null || [[ -x /usr/sbin/dockerd ]] || need_pkgs+=(docker.io)
command -v debootstrap > /dev/null || [[ -x /usr/sbin/debootstrap ]] || need_pkgs+=(debootstrap)
command -v curl > /dev/null || need_pkgs+=(curl)
command -v psql > /dev/null || need_pkgs+=(postgresql-client)
if (( ${#need_pkgs[@]} )); then
  mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get > /dev/null; then
    die "missing ${need_pkgs[*]}; install them as root (apt-get install ${need_pkgs[*]}) or run make docker-test as root"
  fi
  say "installing ${need_pkgs[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -o DPkg::Lock::Timeout=300 --no-install-recommends "${need_pkgs[@]}" > "$CACHE/apt.log" 2>&1 \
    || { apt-get update -o DPkg::Lock::Timeout=300 > /dev/null 2>&1 \
         && apt-get install -y -o DPkg::Lock::Timeout=300 --no-install-recommends "${need_pkgs[@]}" > "$CACHE/apt.log" 2>&1; } \
    || die "apt-get install ${need_pkgs[*]} failed (see var/docker/apt.log)"
fi
DOCKER=/usr/bin/docker
[[ -x "$VENV_BIN/payhub" ]] || die "$VENV_BIN/payhub not found: run make install first"

# ---------------------------------------------------------------- 2. daemon
if ! timeout 10 "$DOCKER" info > /dev/null 2>&1; then
  DOCKERD=$(command -v dockerd || echo /usr/sbin/dockerd)
  [[ $(id -u) -eq 0 ]] || die "no Docker daemon answers and only root can start one here"
  say "no Docker daemon answers: starting $DOCKERD --storage-driver=vfs (log: var/docker/dockerd.log)"
  "$DOCKERD" --storage-driver=vfs > "$CACHE/dockerd.log" 2>&1 &
  STARTED_DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    timeout 5 "$DOCKER" info > /dev/null 2>&1 && break
    kill -0 "$STARTED_DOCKERD_PID" 2> /dev/null || { tail -20 "$CACHE/dockerd.log" >&2; die "dockerd exited"; }
    sleep 1
  done
  timeout 5 "$DOCKER" info > /dev/null 2>&1 || die "dockerd did not answer within 60 s (see var/docker/dockerd.log)"
fi
say "Docker daemon $("$DOCKER" version --format '{{.Server.Version}}'), storage $("$DOCKER" info --format '{{.Driver}}')"

# ---------------------------------------------------------------- 3. base image
base_note="cached"
if ! "$DOCKER" image inspect "$BASE" > /dev/null 2>&1; then
  if [[ ! -s "$BASE_TAR" ]]; then
    [[ $(id -u) -eq 0 ]] || die "building the base image needs root (debootstrap)"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    say "debootstrap bookworm (minbase + python3) from $MIRROR"
    t0=$SECONDS
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
      || { rm -rf "$rootfs"; die "debootstrap failed (see var/docker/debootstrap.log)"; }
    chmod 0755 "$rootfs"   # mktemp made it 0700: it becomes the image's /
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$rootfs"
    base_note="debootstrap $((SECONDS - t0)) s"
  else
    base_note="re-imported from var/docker"
  fi
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    "$BASE_TAR" "$BASE" > /dev/null
fi
say "base image $BASE ($base_note)"

# ---------------------------------------------------------------- 4. build
WORK=$(mktemp -d)
# pip inside the build uses the same index as pip here (default PyPI unless configured); a local
# file:// index cannot be reached from the build, so only http(s) indexes are passed on.
pip_conf() { "$VENV_BIN/python" -m pip config get "$1" 2> /dev/null || true; }
index_url=${PIP_INDEX_URL:-$(pip_conf global.index-url)}
[[ "$index_url" == http* ]] || index_url=""
extra_urls=""
for url in ${PIP_EXTRA_INDEX_URL:-$(pip_conf global.extra-index-url)}; do
  [[ "$url" == http* ]] && extra_urls+=" $url"
done
{
  echo "[global]"
  if [[ -n "$index_url" ]]; then echo "index-url = $index_url"; fi
  if [[ -n "$extra_urls" ]]; then echo "extra-index-url =$extra_urls"; fi
  echo "timeout = 180"
} > "$WORK/pip.conf"
secrets=(--secret "id=pip,src=$WORK/pip.conf")
[[ -s "$CA_BUNDLE" ]] && secrets+=(--secret "id=ca,src=$CA_BUNDLE")
say "building $IMAGE (BASE=$BASE, index ${index_url:-https://pypi.org/simple})"
t0=$SECONDS
old_image_id=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE" 2> /dev/null || true)
build_opts=()
[[ -n "${PAYHUB_DOCKER_NO_CACHE:-}" ]] && build_opts+=(--no-cache)
DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain "${build_opts[@]}" \
  --build-arg "BASE=$BASE" "${secrets[@]}" -t "$IMAGE" . > "$CACHE/build.log" 2>&1 \
  || { tail -30 "$CACHE/build.log" >&2; die "docker build failed (full log: var/docker/build.log)"; }
BUILD_SECONDS=$((SECONDS - t0))
# vfs stores every layer as a full copy: drop the image this build replaced.
if [[ -n "$old_image_id" && "$old_image_id" != "$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE")" ]]; then
  "$DOCKER" image rm "$old_image_id" > /dev/null 2>&1 || true
fi
IMAGE_MB=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1 / 1e6}')
IMAGE_USER=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
[[ "$IMAGE_USER" == "$CONTAINER_UID:$CONTAINER_UID" ]] || die "image user is '$IMAGE_USER', expected $CONTAINER_UID"
"$DOCKER" image inspect -f '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q healthz || die "image has no healthcheck"
# Nothing of this machine in the image: the secrets were mounted for one RUN only, no PIP_* settings stay.
"$DOCKER" image inspect -f '{{json .Config.Env}}' "$IMAGE" | grep -q -e PIP_CERT -e PIP_CONFIG_FILE -e PIP_INDEX \
  && die "pip settings of the build host leaked into the image's environment"
"$DOCKER" run --rm --network none --entrypoint python "$IMAGE" -c '
import os, sys
leaked = [p for p in ("/run/secrets/ca", "/run/secrets/pip") if os.path.exists(p)]
sys.exit(f"leaked into the image: {leaked}" if leaked else "runs as root" if os.getuid() == 0 else 0)
' || die "image check failed (build secrets left in the image, or the image runs as root)"
say "built $IMAGE in ${BUILD_SECONDS} s, ${IMAGE_MB} MB"

# ---------------------------------------------------------------- 5. run
PG_MOUNT=()
if [[ "$PG_ADMIN_URL" != embedded ]] && psql "$PG_ADMIN_URL" -qX -c 'SELECT 1' > /dev/null 2>&1; then
  DB_URL=${PG_ADMIN_URL%/*}/$DB_NAME
  PG_WHERE=${PG_ADMIN_URL%/*}
elif [[ "$PG_ADMIN_URL" == embedded || "$PG_ADMIN_URL" == "$PG_DEFAULT_URL" ]]; then
  # No server here: the embedded PostgreSQL (pgserver, from the venv) on a Unix socket, which the container
  # reaches through a bind mount of the socket file.
  say "no PostgreSQL at $PG_DEFAULT_URL: starting an embedded one (pgserver)"
  "$VENV_BIN/python" - "$WORK/pg" "$WORK/pg.uri" > "$WORK/pgserver.log" 2>&1 <<'PY' &
import os, signal, sys, warnings
warnings.simplefilter("ignore")
import pgserver
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
server = pgserver.get_server(sys.argv[1], cleanup_mode="delete")
with open(sys.argv[2] + ".tmp", "w") as out:
    out.write(server.get_uri())
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.cleanup()
PY
  EMBEDDED_PID=$!
  for _ in $(seq 1 120); do
    [[ -s "$WORK/pg.uri" ]] && break
    kill -0 "$EMBEDDED_PID" 2> /dev/null || { cat "$WORK/pgserver.log" >&2; die "embedded PostgreSQL did not start"; }
    sleep 0.5
  done
  [[ -s "$WORK/pg.uri" ]] || die "embedded PostgreSQL did not start within 60 s"
  PG_ADMIN_URL=$(cat "$WORK/pg.uri")
  socket_dir=$(sed -n 's/.*[?&]host=\([^&]*\).*/\1/p' "$WORK/pg.uri")
  [[ -S "$socket_dir/.s.PGSQL.5432" ]] || die "embedded PostgreSQL socket not found in '$socket_dir'"
  PG_MOUNT=(-v "$socket_dir/.s.PGSQL.5432:/run/payhub-pg/.s.PGSQL.5432")
  DB_URL="postgresql://postgres@/$DB_NAME?host=/run/payhub-pg"
  PG_WHERE="embedded PostgreSQL ($socket_dir)"
else
  die "no PostgreSQL at $PG_ADMIN_URL (set PAYHUB_DOCKER_PG to a server where this user may CREATE DATABASE)"
fi
psql "$PG_ADMIN_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB_NAME" > /dev/null
DB_CREATED=1
say "database $DB_NAME created on $PG_WHERE"

# Dev PKI on the host; the container's user owns its copy (keys stay 0600, the directory 0700).
PAYHUB_HOME="$WORK/home" "$VENV_BIN/payhub" pki init > "$WORK/pki-init.log" 2>&1 \
  || { cat "$WORK/pki-init.log" >&2; die "payhub pki init failed"; }
PKI=$WORK/home/pki
for f in ca.pem clients/acme.pem clients/acme.key; do [[ -s "$PKI/$f" ]] || die "pki init made no $f"; done
if [[ $(id -u) -eq 0 ]]; then
  chown -R "$CONTAINER_UID:$CONTAINER_UID" "$PKI"
else
  chmod -R a+rX "$PKI"   # cannot chown without root: a throwaway test PKI in a private temp dir
fi

for port in "$API_PORT" "$OPS_PORT"; do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then die "port $port is already in use"; fi
done

"$DOCKER" run -d --name "$CONTAINER" --network host \
  -e "PAYHUB_LISTEN=127.0.0.1:$API_PORT" \
  -e "PAYHUB_OPS_LISTEN=127.0.0.1:$OPS_PORT" \
  -e "PAYHUB_DATABASE_URL=$DB_URL" \
  -v "$PKI:/var/lib/payhub/pki:ro" "${PG_MOUNT[@]}" \
  "$IMAGE" serve > /dev/null
say "container $CONTAINER started (api 127.0.0.1:$API_PORT, ops 127.0.0.1:$OPS_PORT)"

running() { [[ $("$DOCKER" inspect -f '{{.State.Running}}' "$CONTAINER") == true ]]; }

t0=$SECONDS
HEALTHZ=""
for _ in $(seq 1 120); do
  running || die "container exited with code $("$DOCKER" inspect -f '{{.State.ExitCode}}' "$CONTAINER")"
  HEALTHZ=$(curl -fsS --max-time 2 "http://127.0.0.1:$OPS_PORT/healthz" 2> /dev/null) && break
  HEALTHZ=""
  sleep 0.5
done
[[ -n "$HEALTHZ" ]] || die "/healthz did not answer within 60 s"
[[ "$HEALTHZ" == *'"ok"'* ]] || die "/healthz answered $HEALTHZ"
say "/healthz after $((SECONDS - t0)) s: $HEALTHZ"

PING=$(curl -fsS --max-time 5 \
  --cert "$PKI/clients/acme.pem" --key "$PKI/clients/acme.key" --cacert "$PKI/ca.pem" \
  "https://localhost:$API_PORT/v1/ping") || die "GET /v1/ping over mTLS failed"
"$VENV_BIN/python" -c '
import json, sys
ping = json.loads(sys.argv[1])
sys.exit(0 if ping.get("object") == "ping" and ping.get("tenant") == "acme" and ping.get("role") == "client" else 1)
' "$PING" || die "unexpected /v1/ping answer: $PING"
say "GET /v1/ping (mTLS, client acme): $PING"

# Without a client certificate the handshake must fail.
if curl -fsS --max-time 5 --cacert "$PKI/ca.pem" "https://localhost:$API_PORT/v1/ping" > /dev/null 2>&1; then
  die "/v1/ping answered without a client certificate"
fi

HEALTH=""
for _ in $(seq 1 90); do
  HEALTH=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$CONTAINER")
  [[ "$HEALTH" == healthy || "$HEALTH" == unhealthy ]] && break
  running || die "container exited while waiting for its healthcheck"
  sleep 1
done
[[ "$HEALTH" == healthy ]] || die "Docker health status is '$HEALTH', expected healthy"
say "Docker healthcheck: $HEALTH after $((SECONDS - t0)) s"

t1=$SECONDS
"$DOCKER" stop -t 20 "$CONTAINER" > /dev/null
EXIT_CODE=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
[[ "$EXIT_CODE" == 0 ]] || die "container exit code after docker stop: $EXIT_CODE"
say "docker stop: exit code 0 after $((SECONDS - t1)) s"

"$DOCKER" logs "$CONTAINER" > "$CACHE/container.log" 2>&1
LOG_SUMMARY=$("$VENV_BIN/python" - "$CACHE/container.log" <<'EOF'
import json, re, sys
lines = open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines()
bad = []
for n, line in enumerate(lines, 1):
    try:
        if not isinstance(json.loads(line), dict):
            bad.append((n, line))
    except ValueError:
        bad.append((n, line))
text = "\n".join(lines)
if bad:
    for n, line in bad[:10]:
        print(f"line {n} is not a JSON object: {line[:200]}", file=sys.stderr)
    sys.exit(1)
if "Traceback" in text or re.search(r"\b4111[ -]?1111[ -]?1111[ -]?1111\b", text):
    print("a traceback or a card number in the logs", file=sys.stderr)
    sys.exit(1)
events = [json.loads(line).get("event") for line in lines]
for wanted in ("gateway.listening", "gateway.stopping"):
    if wanted not in events:
        print(f"no {wanted} event in the logs", file=sys.stderr)
        sys.exit(1)
levels = {}
for line in lines:
    level = json.loads(line).get("level", "?")
    levels[level] = levels.get(level, 0) + 1
print(f"{len(lines)} lines, all JSON ({', '.join(f'{k} {v}' for k, v in sorted(levels.items()))})")
EOF
) || die "docker logs hold non-JSON lines or a traceback"
say "docker logs: $LOG_SUMMARY (saved as var/docker/container.log)"

"$DOCKER" rm "$CONTAINER" > /dev/null

cat <<EOF

docker-test: PASS
  database     $DB_NAME on $PG_WHERE (dropped)
  base image   $BASE ($base_note)
  image        $IMAGE, ${IMAGE_MB} MB, user $IMAGE_USER
  build time   ${BUILD_SECONDS} s (log: var/docker/build.log)
  /healthz     $HEALTHZ
  /v1/ping     $PING
  healthcheck  $HEALTH
  logs         $LOG_SUMMARY (var/docker/container.log)
  stop         exit code $EXIT_CODE
EOF
