#!/usr/bin/env bash
# Builds the runtime images stylefarm-coordinator and stylefarm-worker on this machine
# without pulling anything from a registry: each is `FROM scratch` holding the stripped
# binaries, exactly the shared libraries `ldd` names and the dynamic loader, CA certificates,
# a passwd entry for the non-root user 10001, its home and /tmp. The same paths, user,
# environment and entry points as deploy/docker/Dockerfile's images.
#
#   deploy/docker/build-images.sh [--tag TAG]
#
# Binaries: target/debug/ (the dev profile is optimised; `make test` builds them) when all
# three are there, else `cargo build` makes them. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=latest
while [ $# -gt 0 ]; do
    case "$1" in
    --tag) tag="$2"; shift 2 ;;
    *) echo "usage: $0 [--tag TAG]" >&2; exit 2 ;;
    esac
done

target="${CARGO_TARGET_DIR:-target}/debug"
bins=(stylefarm-coordinator stylefarm-worker stylefarm)
missing=0
for b in "${bins[@]}"; do [ -x "$target/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
    echo "building ${bins[*]} (cargo build)" >&2
    "${CARGO:-cargo}" build --quiet --bin stylefarm-coordinator --bin stylefarm-worker --bin stylefarm
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$ctx/home" "$ctx/data" "$ctx/weights"

for b in "${bins[@]}"; do
    strip -o "$ctx/$b" "$target/$b"
done

# Every library the binaries load, and the loader, at the paths ldd prints (copied through
# symlinks, so each is a plain file where the binary looks for it).
libs=$(for b in "${bins[@]}"; do ldd "$ctx/$b"; done \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | sort -u)
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nstylefarm:x:10001:10001:stylefarm:/home/stylefarm:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nstylefarm:x:10001:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"

# The parts both images share, then each image's binaries on top.
common='FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 home/ /home/stylefarm/
COPY --chown=10001:10001 data/ /var/lib/stylefarm/
COPY weights/ /weights/
ENV HOME=/home/stylefarm \
    STYLEFARM_LOG_FORMAT=json \
    STYLEFARM_HTTP_LISTEN=0.0.0.0:9090 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001
WORKDIR /home/stylefarm'

cat >"$ctx/Dockerfile.coordinator" <<DOCKERFILE
$common
COPY stylefarm-coordinator /usr/local/bin/
ENV STYLEFARM_LISTEN=0.0.0.0:50051 \\
    STYLEFARM_DATA_DIR=/var/lib/stylefarm
EXPOSE 50051 9090
VOLUME /var/lib/stylefarm
ENTRYPOINT ["/usr/local/bin/stylefarm-coordinator"]
DOCKERFILE

cat >"$ctx/Dockerfile.worker" <<DOCKERFILE
$common
COPY stylefarm-worker stylefarm /usr/local/bin/
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/stylefarm-worker"]
DOCKERFILE

for image in coordinator worker; do
    # The classic builder: FROM scratch needs nothing from a registry, nor any frontend image.
    DOCKER_BUILDKIT=0 docker build --quiet --pull=false \
        --label org.opencontainers.image.source=https://github.com/stylefarm/stylefarm \
        --label org.opencontainers.image.revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        -f "$ctx/Dockerfile.$image" -t "stylefarm-$image:$tag" "$ctx" >"$ctx/build.log" 2>&1 \
        || { cat "$ctx/build.log" >&2; exit 1; }
done
# Each image runs: the loader finds every library, the user is 10001.
docker run --rm --entrypoint /usr/local/bin/stylefarm-coordinator "stylefarm-coordinator:$tag" --version >/dev/null
docker run --rm "stylefarm-worker:$tag" --version >/dev/null
docker run --rm --entrypoint /usr/local/bin/stylefarm "stylefarm-worker:$tag" --version >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E "^stylefarm-(coordinator|worker):$tag " || true
