#!/usr/bin/env bash
# Build the CAD images on an air-gapped Debian machine: only the Debian mirror and the package
# index pip already uses are needed, no container registry.
#
#   deploy/build-local.sh                       # server and trainer
#   BUILD_TARGETS="server review-ui" deploy/build-local.sh
#   BUILD_TARGETS="server trainer review-ui dicom-gateway postgres prometheus pacs" \
#     deploy/build-local.sh                     # everything deploy/compose.local.yaml runs
#
# 1. Uses the Docker daemon DOCKER_HOST points at if one answers; otherwise starts a private
#    dockerd (overlay2, no iptables, no bridge) with its images under BUILD_DOCKER_DATA_ROOT
#    (default /var/lib/cad-docker) and stops it again at the end (by its PID). A DOCKER_HOST that
#    does not answer is an error, never silently replaced.
# 2. Makes the base image cad-base:bookworm with debootstrap (python3 in a venv on PATH, useradd,
#    the host's CA bundle trusted by pip) unless it exists; BUILD_DEBIAN_MIRROR picks the mirror.
# 3. Passes the host's pip configuration (index URL, extra index URLs, find-links) as build
#    arguments; local folders and file:// indexes are served read-only over 127.0.0.1 for the
#    build by a small HTTP server this script starts and stops.
# 4. Builds each target with BuildKit (Debian's docker client) on the host network, tags it
#    cad-<target>:local (BUILD_TAG), and prints its size and build time.
#
# Needs root (dockerd, debootstrap), docker.io and debootstrap. Everything it starts it stops;
# everything temporary is under one folder it removes.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGETS="${BUILD_TARGETS:-server trainer}"
TAG="${BUILD_TAG:-local}"
BASE="${BUILD_BASE_IMAGE:-cad-base:bookworm}"
DATA_ROOT="${BUILD_DOCKER_DATA_ROOT:-/var/lib/cad-docker}"
DOCKER="${DOCKER:-}"
if [ -z "$DOCKER" ]; then
  # Debian's client drives the daemon's built-in BuildKit; a client without buildx cannot.
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER="$(command -v docker)"; fi
fi

WORK="$(mktemp -d /tmp/cad-build.XXXXXX)"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  # a stopped dockerd can leave its network namespace mounted under its exec root
  awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '[build-local] %s\n' "$*"; }

# ------------------------------------------------------------------ 1. a Docker daemon
if ! "$DOCKER" info >/dev/null 2>&1; then
  if [ -n "${DOCKER_HOST:-}" ]; then
    say "DOCKER_HOST=$DOCKER_HOST does not answer; start that daemon, or unset DOCKER_HOST"
    exit 1
  fi
  say "no Docker daemon answers; starting a private one (images under $DATA_ROOT)"
  mkdir -p "$DATA_ROOT"
  dockerd --data-root "$DATA_ROOT" --exec-root "$WORK/exec" -H "unix://$WORK/docker.sock" \
    --pidfile "$WORK/dockerd.pid" --storage-driver overlay2 --iptables=false \
    --ip6tables=false --bridge=none >"$WORK/dockerd.log" 2>&1 &
  PIDS+=("$!")
  export DOCKER_HOST="unix://$WORK/docker.sock"
  for _ in $(seq 1 120); do
    "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$WORK/dockerd.log" >&2; exit 1; }
    sleep 0.5  # polling a daemon we started until its API answers
  done
  "$DOCKER" info >/dev/null || { say "dockerd did not start"; cat "$WORK/dockerd.log" >&2; exit 1; }
fi

# ------------------------------------------------------------------ 2. the base image
if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
  mirror="${BUILD_DEBIAN_MIRROR:-}"
  if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  mirror="${mirror:-http://deb.debian.org/debian}"
  say "making $BASE with debootstrap from $mirror"
  start=$(date +%s)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  chroot "$WORK/rootfs" python3 -m venv /opt/venv
  cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
  chroot "$WORK/rootfs" apt-get clean
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | "$DOCKER" import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
  say "$BASE made in $(($(date +%s) - start)) s"
fi

# ------------------------------------------------------------------ 3. the host's pip configuration
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 - "$WORK/mirror" "$PORT" >"$WORK/pip-args" <<'EOF'
"""Print the host's pip index settings as --build-arg lines; local folders become loopback URLs."""
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

mirror, port = Path(sys.argv[1]), sys.argv[2]
mirror.mkdir()
listed = subprocess.run(
    [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
).stdout
config: dict[str, str] = {}
for line in listed.splitlines():
    key, _, value = line.partition("=")
    config[key.split(".", 1)[-1]] = value.strip().strip("'\"")
for key in ("index-url", "extra-index-url", "find-links", "trusted-host"):
    env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if env:
        config[key] = env
served = 0


def reachable(url: str, index: bool) -> str:
    """``url`` as the build sees it. A local index is served with its parent folder, so that
    its pages' relative links (``../../files/...``) still resolve; a find-links folder as is."""
    global served
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return url
    path = Path(parsed.path if parsed.scheme == "file" else url).resolve()
    if not path.exists():
        return ""
    served += 1
    if index:
        (mirror / str(served)).symlink_to(path.parent)
        return f"http://127.0.0.1:{port}/{served}/{path.name}/"
    (mirror / str(served)).symlink_to(path)
    return f"http://127.0.0.1:{port}/{served}/"


for key, arg in (
    ("index-url", "PIP_INDEX_URL"),
    ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
    ("find-links", "PIP_FIND_LINKS"),
):
    found = (reachable(v, key != "find-links") for v in config.get(key, "").split())
    urls = [u for u in found if u]
    if urls:
        print(f"{arg}={' '.join(urls)}")
hosts = config.get("trusted-host", "").split() + (["127.0.0.1"] if served else [])
if hosts:
    print(f"PIP_TRUSTED_HOST={' '.join(hosts)}")
EOF
BUILD_ARGS=(--build-arg "PYTHON_IMAGE=$BASE")
while IFS= read -r line; do
  BUILD_ARGS+=(--build-arg "$line")
  say "pip: $line"
done <"$WORK/pip-args"
if [ -n "${TORCH_INDEX_URL:-}" ]; then BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"); fi
if [ -n "$(ls -A "$WORK/mirror")" ]; then
  (cd "$WORK/mirror" && exec python3 -m http.server --bind 127.0.0.1 "$PORT") >"$WORK/http.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 60); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=2)" \
      2>/dev/null && break
    sleep 0.25  # polling the file server we started until it answers
  done
fi

# ------------------------------------------------------------------ 4. the images
for target in $TARGETS; do
  image="cad-$target:$TAG"
  say "building $image"
  start=$(date +%s)
  case "$target" in
    # the registry images' stand-ins and the demo PACS, from Debian's packages
    postgres | prometheus | pacs) file=(-f "$ROOT/deploy/local/Dockerfile" --build-arg "BASE_IMAGE=$BASE") ;;
    *) file=() ;;
  esac
  DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain "${BUILD_ARGS[@]}" "${file[@]}" \
    --target "$target" -t "$image" "$ROOT" >"$WORK/build-$target.log" 2>&1 \
    || { tail -40 "$WORK/build-$target.log" >&2; exit 1; }
  size="$("$DOCKER" image inspect --format '{{.Size}}' "$image")"
  say "built $image in $(($(date +%s) - start)) s, $((size / 1000000)) MB"
done
