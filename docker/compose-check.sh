#!/usr/bin/env bash
# `make compose-check`: build the images without any registry, start docker/compose.yaml with podman-compose, run a
# 1-round campaign with two nodes that join from this host (outside the containers) through the published ports,
# and tear it all down, also on failure (containers, pod, network, volumes; the images stay cached).
#
# Needs root and Debian's podman, runc, podman-compose and debootstrap (`apt-get install podman runc podman-compose
# debootstrap`). What this machine needs of podman (docs/deploy.md): runc instead of crun, lower default ulimits.
# Settings: PYTHON (the host's Python with the contributor package: .venv/bin/python), NODES (2),
# DEBIAN_MIRROR, TORCH_WHEELS (a folder holding the torch 2.13.0 CPU wheel, mounted into the build; /opt/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/var/containers
RUN_DIR=$ROOT/var/compose-check
PROJECT=bayanihan-check
NODES=${NODES:-2}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
BASE=localhost/bayanihan-base:bookworm
mkdir -p "$CACHE"
rm -rf "$RUN_DIR" && mkdir -p "$RUN_DIR"

# Root here lacks CAP_SYS_RESOURCE (podman's default ulimits exceed the hard limits) and crun refuses the hybrid
# cgroup layout: runc with lower ulimits runs (FACTS.md, "Containers on these machines").
cat >"$CACHE/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$CACHE/containers.conf

declare -A T
START=$(date +%s)
lap() { local now; now=$(date +%s); T[$1]=$((now - START)); START=$now; echo "== $1: ${T[$1]} s"; }
compose() { podman-compose --no-ansi -p "$PROJECT" -f docker/compose.yaml "$@"; }
container() { echo "${PROJECT}_$1_1"; }
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

JOIN_PIDS=()
cleanup() {
    local rc=$?
    set +e
    for pid in "${JOIN_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${JOIN_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    if [ "$rc" -ne 0 ] && podman container exists "$(container web)" 2>/dev/null; then
        for s in web worker superlink proxy; do
            podman logs "$(container "$s")" >"$RUN_DIR/$s.log" 2>&1
        done
        echo "!! failed: container logs in $RUN_DIR/*.log; last lines of each:"
        for s in web worker superlink proxy; do echo "--- $s"; tail -n 15 "$RUN_DIR/$s.log"; done
        for f in "$RUN_DIR"/join-*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
    fi
    compose down -v -t 5 >/dev/null 2>&1
    # Whatever `down` left (a container that was being created, the pod, the network, the volumes).
    podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f >/dev/null 2>&1
    podman pod rm -f "pod_$PROJECT" >/dev/null 2>&1
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1
    podman volume rm -f "${PROJECT}_bayanihan-var" "${PROJECT}_pgdata" >/dev/null 2>&1
    left=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT"; podman pod ps -q --filter "name=$PROJECT";
           podman network ls -q --filter "name=$PROJECT"; podman volume ls -q --filter "name=$PROJECT")
    if [ -n "$left" ]; then echo "!! left behind: $left"; rc=1; else echo "== torn down (containers, network, volumes)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The base image: a debootstrapped bookworm rootfs with this machine's CA certificates (the egress proxy's TLS)
#    and pip told to use them, imported once; the tarball is cached under var/containers/.
if ! podman image exists "$BASE"; then
    tarball=$CACHE/base-bookworm.tar
    if [ ! -s "$tarball" ]; then
        rootfs=$CACHE/rootfs-bookworm
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log"
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
    fi
    podman import --quiet "$tarball" "$BASE" >/dev/null
fi
lap "base image"

# 2. The images. PyPI is reachable here, download.pytorch.org is not: torch's CPU wheel comes from TORCH_WHEELS,
#    mounted into the build (PyPI's torch 2.13.0 is the CUDA build, several GB).
build() { podman build --quiet --build-arg BASE_IMAGE="$BASE" "$@" . >/dev/null; }
build -t localhost/bayanihan-postgres:15 -f docker/postgres.Dockerfile
build -t localhost/bayanihan-redis:7 -f docker/redis.Dockerfile
build -t localhost/bayanihan-app:latest -f docker/Dockerfile \
    --build-arg TORCH_INDEX= --build-arg PIP_FIND_LINKS=/wheels -v "$TORCH_WHEELS:/wheels:ro"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep bayanihan-
lap "build"

# 3. Up, with free host ports; nodes dial 127.0.0.1, which the SuperLink's certificate covers.
WEB_PORT=$(free_port)
FLEET_PORT=$(free_port)
export BASE_IMAGE=$BASE APP_IMAGE=localhost/bayanihan-app:latest POSTGRES_IMAGE=localhost/bayanihan-postgres:15 \
    REDIS_IMAGE=localhost/bayanihan-redis:7 WEB_PORT FLEET_PORT PUBLISH_HOST=127.0.0.1 PUBLIC_HOST=127.0.0.1
compose up -d --no-build >"$RUN_DIR/compose-up.log" 2>&1 || { cat "$RUN_DIR/compose-up.log"; exit 1; }
SITE=http://127.0.0.1:$WEB_PORT
wait_for() {  # what, seconds, command...
    local what=$1 n=$2; shift 2
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    echo "!! $what did not answer within $n s"; return 1
}
wait_for "web ($SITE)" 300 curl -sf "$SITE/releases/"
podman cp "$(container web):/app/var/superlink-tls/ca.crt" "$RUN_DIR/ca.crt" 2>/dev/null \
    || wait_for "the SuperLink's CA" 120 podman cp "$(container web):/app/var/superlink-tls/ca.crt" "$RUN_DIR/ca.crt"
# The certificate is checked against the name nodes dial (no -k): TLS is right for the published address.
wait_for "the Fleet proxy (https://127.0.0.1:$FLEET_PORT)" 120 \
    curl -sf --cacert "$RUN_DIR/ca.crt" "https://127.0.0.1:$FLEET_PORT/health"
control=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$RUN_DIR/ca.crt" -X POST \
    "https://127.0.0.1:$FLEET_PORT/v1/control/list-runs")
[ "$control" = 404 ] || { echo "!! the proxy let the Control API through (HTTP $control)"; exit 1; }
podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}: {{.Status}}'
lap "up"

# 4. The campaign: the site makes the tiny model, corpus and tokens; the nodes join from this host.
site() { podman exec "$(container web)" python docker/compose_check_site.py "$@"; }
site setup "$NODES" >"$RUN_DIR/setup.json" 2>"$RUN_DIR/setup.log" || { cat "$RUN_DIR/setup.log"; exit 1; }
podman cp "$(container web):$("$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["model"])' <"$RUN_DIR/setup.json")" \
    "$RUN_DIR/model"
podman cp "$(container web):/app/var/compose-check/corpus" "$RUN_DIR/corpus"
for name in $("$PYTHON" -c 'import json,sys; print(" ".join(json.load(sys.stdin)["tokens"]))' <"$RUN_DIR/setup.json"); do
    token=$("$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['tokens']['$name'])" <"$RUN_DIR/setup.json")
    FLWR_TELEMETRY_ENABLED=0 "$PYTHON" -m federation join --site "$SITE" --token "$token" --data "$RUN_DIR/corpus/$name" \
        --model "$RUN_DIR/model" --name "$name" --home "$RUN_DIR/nodes/$name" --interval 3 >"$RUN_DIR/join-$name.log" 2>&1 &
    JOIN_PIDS+=($!)
done
campaign=$(site launch "$NODES")
echo "campaign #$campaign launched; nodes: ${#JOIN_PIDS[@]} joining from the host"
site wait "$campaign" | tee "$RUN_DIR/campaign.txt"
# The release, downloaded from the published web port, byte for byte what the site recorded.
grep -q '^file ' "$RUN_DIR/campaign.txt" || { echo "!! no release file listed"; exit 1; }
while read -r _ url sha size; do
    curl -sf -o "$RUN_DIR/download" "$SITE$url" || { echo "!! GET $url failed"; exit 1; }
    got=$(sha256sum "$RUN_DIR/download" | cut -d' ' -f1)
    [ "$got" = "$sha" ] || { echo "!! $url: sha256 $got, recorded $sha"; exit 1; }
    echo "downloaded $url: $size B, sha256 matches"
done < <(grep '^file ' "$RUN_DIR/campaign.txt")
# Those bytes were sent by the proxy, not by a web worker: web itself answers the same GET with X-Accel-Redirect and
# no body, the published port with the file and no X-Accel-* header; a Range goes through Django's decision too.
read -r _ url sha size < <(grep '^file .*\.safetensors ' "$RUN_DIR/campaign.txt")
direct=$(podman exec "$(container web)" python -c 'import sys, urllib.request as u
r = u.urlopen(u.Request("http://127.0.0.1:8000" + sys.argv[1], headers={"Host": "proxy"}))
print(r.headers.get("X-Accel-Redirect") or "-", len(r.read()))' "$url")
case "$direct" in /*" 0") ;; *) echo "!! web answered $url itself: X-Accel-Redirect, body bytes = $direct"; exit 1 ;; esac
curl -sf -D "$RUN_DIR/download.headers" -o "$RUN_DIR/whole" "$SITE$url"
grep -qi '^x-accel' "$RUN_DIR/download.headers" && { echo "!! the proxy passed X-Accel-* on to the client"; exit 1; }
code=$(curl -s -r 100-1123 -o "$RUN_DIR/range" -w '%{http_code}' "$SITE$url")
[ "$code" = 206 ] && cmp -s "$RUN_DIR/range" <(tail -c +101 "$RUN_DIR/whole" | head -c 1024) \
    || { echo "!! Range 100-1123 of $url: HTTP $code, $(stat -c %s "$RUN_DIR/range") B"; exit 1; }
workers=$(podman exec "$(container web)" sh -c 'for p in /proc/[0-9]*/cmdline; do tr "\0" " " <"$p"; echo; done' \
    | grep -c spawn_main || true)
[ "$workers" -ge 2 ] || { echo "!! web runs $workers uvicorn worker processes"; exit 1; }
echo "sent by the proxy: web answered X-Accel-Redirect ${direct% *} with 0 B; Range 100-1123: 206, 1024 B match; web: $workers uvicorn workers"
for f in "$RUN_DIR"/join-*.log; do
    grep -q "insecure" "$f" && { echo "!! $f mentions 'insecure'"; exit 1; }
    echo "$(basename "$f"): $(grep -c . "$f") lines, last: $(tail -n 1 "$f")"
done
lap "campaign"
echo "== compose check passed: base image ${T[base image]} s, build ${T[build]} s, up ${T[up]} s, campaign ${T[campaign]} s"
