#!/usr/bin/env bash
# Build the project's image with Debian's buildah and run it with podman, then check it from outside:
# /ready, a real Kermany JPEG on /v1/predict, the image's HEALTHCHECK, the server's uid (10001).
#
#   scripts/container_smoke.sh CKPT [JPEG]
#
# 1. the base image: the Dockerfile's FROM (ARG PYTHON_IMAGE) when it is in local storage, else one made here
#    from Debian packages (debootstrap bookworm minbase + python3 python3-venv, `python` -> python3), tagged with
#    that name, so the Dockerfile builds unchanged without a registry for base images;
# 2. the project's image, `buildah bud` of the unchanged Dockerfile, reused while its label (a hash of the build
#    context but README.md) matches the working tree;
# 3. a container with CKPT mounted read-only at /models/model.ckpt (the Dockerfile's default entry point) and
#    8080 published on 127.0.0.1 only; stopped and removed on exit.
#
# Environment:
#   CONTAINER_TARGET  auto (default) | cpu | gpu. auto: cpu when download.pytorch.org (the cpu target's torch
#                     index) answers, else gpu (PyPI's CUDA wheels; the server runs on the CPU, device=cpu)
#   REBUILD=1         rebuild the project's image even if a current one exists (the base image is kept)
#   STORAGE_DRIVER    containers/storage driver for buildah and podman (overlay, vfs); default: theirs
#   BUILD_TIMEOUT     seconds for the project's image build (default 3600); READY_TIMEOUT for /ready (300)
#   PIP_CERT          a CA bundle the build's pip must trust (a TLS-intercepting proxy); default: the host pip's
#                     `global.cert`, if any. It is bind-mounted into the build's RUN steps, not into the image
#   SMOKE_OUT         a folder for result.json (image, size, build seconds, /ready, the prediction, health, uid)
#
# Exit status: 0 all checks passed; 1 a check failed or the image did not build; 77 a tool is missing or the
# sandbox refused a step (the message names the command and its error).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CKPT="${1:?usage: scripts/container_smoke.sh CKPT [JPEG]}"
JPEG="${2:-$ROOT/../shared/data/chest_xray_kermany224/test/NORMAL/IM-0001-0001.jpeg}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-3600}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
TARGET="${CONTAINER_TARGET:-auto}"
NAME="pneumonia-cam-smoke-$$"
STATE="$(mktemp -d /var/tmp/pneumonia-cam-smoke.XXXXXX)"
SMOKE_OUT="${SMOKE_OUT:-$STATE}"
mkdir -p "$SMOKE_OUT"

step() { printf '\n==> %s\n' "$*"; }
refused() { # a missing tool or a step this sandbox does not allow: exit 77
    printf 'REFUSED: %s\n' "$*" >&2
    exit 77
}
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}

STORAGE=()
[ -n "${STORAGE_DRIVER:-}" ] && STORAGE=(--storage-driver "$STORAGE_DRIVER")
buildah() { command buildah "${STORAGE[@]}" "$@"; }
podman() { command podman "${STORAGE[@]}" "$@"; }

cleanup() {
    podman rm -f -t 5 "$NAME" >/dev/null 2>&1 || true
    [ -n "${BASE_CTR:-}" ] && buildah rm "$BASE_CTR" >/dev/null 2>&1
    rm -rf "$STATE/rootfs" "$STATE/model.ckpt"
    [ "$SMOKE_OUT" = "$STATE" ] || rm -rf "$STATE"
}
trap cleanup EXIT

step "tools"
for tool in buildah podman curl python3; do
    command -v "$tool" >/dev/null || refused "$tool is not installed (apt-get install buildah podman curl python3)"
done
# without it podman's netavark fails to publish the port with only "netavark: No such file or directory"
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] \
    || refused "iptables is not installed: podman's netavark needs it to publish a port (apt-get install iptables)"
[ -f "$CKPT" ] || fail "no checkpoint at $CKPT"
[ -f "$JPEG" ] || fail "no image at $JPEG"
echo "buildah $(command buildah --version | cut -d' ' -f3), $(command podman --version)"

# ---- 1. the base image ----
base="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$ROOT/Dockerfile")"
[ -n "$base" ] || fail "no ARG PYTHON_IMAGE= in the Dockerfile"
case "${base%%/*}" in
*.* | *:[0-9]* | localhost) ;;  # has a registry
*) base="docker.io/library/$base" ;;
esac
step "base image $base"
if buildah inspect --type image "$base" >/dev/null 2>&1; then
    echo "in local storage: $(buildah inspect --type image --format '{{.FromImageID}}' "$base" | cut -c1-12)"
else
    command -v debootstrap >/dev/null || refused "debootstrap is not installed (apt-get install debootstrap)"
    mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    echo "not in local storage: debootstrap bookworm from $mirror"
    timeout 1200 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$STATE/rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
        || { tail -20 "$STATE/debootstrap.log" >&2; refused "debootstrap bookworm $STATE/rootfs $mirror"; }
    # what the official image provides and the Dockerfile relies on: `python` on PATH (3.11, venv, pip)
    ln -sf /usr/bin/python3 "$STATE/rootfs/usr/local/bin/python"
    rm -rf "$STATE/rootfs/var/lib/apt/lists/"* "$STATE/rootfs/var/cache/apt/"*.bin
    BASE_CTR="$(buildah from scratch)" || refused "buildah from scratch"
    mnt="$(buildah mount "$BASE_CTR")" || refused "buildah mount $BASE_CTR"
    tar -C "$STATE/rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . | tar -C "$mnt" -xpf -
    buildah umount "$BASE_CTR" >/dev/null
    buildah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 --label org.pneumonia-cam.base="debootstrap bookworm minbase + python3 python3-venv" \
        "$BASE_CTR"
    buildah commit --rm "$BASE_CTR" "$base" >/dev/null || refused "buildah commit $base"
    BASE_CTR=
    rm -rf "$STATE/rootfs"
fi
BASE_CTR="$(buildah from --pull=never "$base")" || refused "buildah from $base"
buildah run --isolation chroot "$BASE_CTR" python -c \
    'import sys, venv, ensurepip; print("python", sys.version.split()[0])' || refused "buildah run $base"
buildah rm "$BASE_CTR" >/dev/null
BASE_CTR=

# ---- 2. the project's image ----
if [ "$TARGET" = auto ]; then
    if python3 -c 'import urllib.request as u; u.urlopen("https://download.pytorch.org/whl/cpu/torch/", timeout=10)' \
        >/dev/null 2>&1; then
        TARGET=cpu
    else
        TARGET=gpu
        echo "download.pytorch.org does not answer (the cpu target's torch index): building the gpu target"
    fi
fi
IMAGE="localhost/pneumonia-cam:smoke-$TARGET"
# README.md is in the context only as the package's long description: editing it does not force a rebuild
context="$(cd "$ROOT" && find Dockerfile .dockerignore pyproject.toml configs src pneumonia_cam -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
step "project image $IMAGE (target $TARGET, context $context)"
have="$(buildah inspect --type image --format '{{index .Docker.Config.Labels "org.pneumonia-cam.context"}}' \
    "$IMAGE" 2>/dev/null || true)"
build_seconds=None # a Python literal: the result below is written by python3
if [ "$have" = "$context" ] && [ "${REBUILD:-0}" != 1 ]; then
    echo "current image in local storage: reused (REBUILD=1 to build again)"
else
    mounts=()
    cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$STATE/pip.conf"
        mounts=(-v "$cert:/etc/ssl/certs/ca-certificates.crt:ro" -v "$STATE/pip.conf:/etc/pip.conf:ro")
        echo "the build's pip trusts $cert (bind-mounted into RUN steps only)"
    fi
    start=$(date +%s)
    # --format docker: OCI image configs have no HEALTHCHECK
    echo "+ buildah bud --isolation chroot --network host --format docker --pull=never --target $TARGET ${mounts[*]}"
    timeout "$BUILD_TIMEOUT" buildah bud --isolation chroot --network host --format docker --pull=never \
        --target "$TARGET" --label "org.pneumonia-cam.context=$context" "${mounts[@]}" -t "$IMAGE" "$ROOT" \
        >"$SMOKE_OUT/build.log" 2>&1 \
        || { tail -30 "$SMOKE_OUT/build.log" >&2; fail "buildah bud --target $TARGET (log: $SMOKE_OUT/build.log)"; }
    build_seconds=$(($(date +%s) - start))
    echo "built in ${build_seconds}s"
fi
size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
echo "image size: $((size / 1000000)) MB"

# ---- 3. run it ----
install -m 0644 "$CKPT" "$STATE/model.ckpt"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# lower the limits podman would raise (raising needs CAP_SYS_RESOURCE, which a sandbox may lack)
run=(run -d --name "$NAME" --ulimit nofile=8192:8192 --ulimit nproc=8192:8192 -p "127.0.0.1:$port:8080"
    -v "$STATE/model.ckpt:/models/model.ckpt:ro" "$IMAGE")
step "podman ${run[*]}"
if ! podman "${run[@]}" >"$STATE/run.err" 2>&1; then
    cat "$STATE/run.err" >&2
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    # crun refuses hybrid cgroup hierarchies (v1 + v2 with controllers); runc accepts them
    command -v runc >/dev/null || refused "podman ${run[*]}: $(tail -1 "$STATE/run.err")"
    step "podman --runtime runc ${run[*]}"
    podman --runtime runc "${run[@]}" >"$STATE/run.err" 2>&1 \
        || { cat "$STATE/run.err" >&2; refused "podman --runtime runc ${run[*]}: $(tail -1 "$STATE/run.err")"; }
fi

step "waiting for http://127.0.0.1:$port/ready (at most ${READY_TIMEOUT}s)"
deadline=$(($(date +%s) + READY_TIMEOUT))
ready=000
while :; do
    ready="$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready" || true)"
    [ "$ready" = 200 ] && break
    if [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
        podman logs "$NAME" 2>&1 | tail -30 >&2
        fail "the container exited before /ready"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { podman logs "$NAME" 2>&1 | tail -30 >&2; fail "/ready: $ready"; }
    sleep 1
done
echo "/ready: $ready"

step "POST $(basename "$JPEG") to /v1/predict"
curl -sS -m 120 --fail-with-body -F "file=@$JPEG;type=image/jpeg" "http://127.0.0.1:$port/v1/predict" \
    >"$SMOKE_OUT/predict.json" || fail "/v1/predict: $(cat "$SMOKE_OUT/predict.json")"
cat "$SMOKE_OUT/predict.json"
echo

step "HEALTHCHECK: $(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")"
health=0
timeout 60 podman healthcheck run "$NAME" || health=$?
echo "podman healthcheck run: exit $health"

step "the server's user"
podman top "$NAME" user huser pid args || true
pid="$(podman inspect --format '{{.State.Pid}}' "$NAME")"
tr '\0' ' ' <"/proc/$pid/cmdline"
echo
uid="$(awk '/^Uid:/ {print $3}' "/proc/$pid/status")" # effective uid of the container's process 1
echo "uid of process 1 (pid $pid on the host): $uid"

python3 - "$SMOKE_OUT" <<EOF
import json, sys
out = sys.argv[1]
result = {
    "image": "$IMAGE", "target": "$TARGET", "base": "$base", "size_bytes": $size,
    "build_seconds": $build_seconds, "ready": int("$ready"), "health_rc": $health, "uid": int("$uid"),
    "jpeg": "$JPEG", "predict": json.load(open(f"{out}/predict.json")),
}
json.dump(result, open(f"{out}/result.json", "w"), indent=1)
EOF
echo "result: $SMOKE_OUT/result.json"
[ "$health" = 0 ] || fail "HEALTHCHECK exit $health"
[ "$uid" = 10001 ] || fail "the server runs as uid $uid, not 10001"
step "all checks passed"
