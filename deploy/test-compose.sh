#!/usr/bin/env bash
# The farm of deploy/compose.yaml, tested for real on this Docker host: builds the images
# (deploy/docker/build-images.sh), starts a coordinator and 3 workers, submits from the host
# CLI a batch of frames and a lock-step tiled image, and meanwhile
#   - kills a worker mid-task (docker kill): its task completes elsewhere;
#   - cuts a worker off the network mid-task until its lease lapses, then reconnects it: the
#     task completes once, the worker's late result is refused, it takes new work;
#   - restarts the coordinator: the jobs complete, earlier results are still fetchable;
#   - scales the workers to 5 and back to 2 mid-job: the removed ones drain.
# Then it fetches and checks the results (sizes; the tiled image's objective against an
# untiled render's at the same settings), scrapes /metrics, prints a timeline, and tears the
# farm down, also when something failed.
#
# The workers use the tiny VGG with made-up weights (engine/tests/data/tiny_vgg16.safetensors)
# so that it runs in minutes on 2 cores; the objective comparison is the same one
# tests/tests/split.rs makes on it (a render of 0 iterations from each image judges it).
#
#   deploy/test-compose.sh          (KEEP=1: leave the farm up afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$project" -f deploy/compose.yaml "$@"
    else
        docker-compose -p "$project" -f deploy/compose.yaml "$@"
    fi
}

project=sftest$$
work=$(mktemp -d)
timeline="$work/timeline"
t0=$EPOCHREALTIME
status=1

ev() {
    local line
    line=$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v m="$*" 'BEGIN { printf "%7.1fs  %s", b - a, m }')
    echo "$line" | tee -a "$timeline" >&2
}
die() {
    ev "FAIL: $*"
    exit 1
}

teardown() {
    set +e
    if [ "$status" != 0 ]; then
        echo "--- the coordinator's last log lines" >&2
        compose logs --no-color --tail 40 coordinator >&2 2>/dev/null
        echo "--- the workers' last log lines" >&2
        compose logs --no-color --tail 15 worker >&2 2>/dev/null
    fi
    echo "--- timeline" >&2
    cat "$timeline" >&2
    if [ "${KEEP:-0}" = 1 ]; then
        echo "KEEP=1: the farm is still up (project $project)" >&2
    else
        compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
        rm -rf "$work"
    fi
    [ "$status" = 0 ] && echo "compose test passed" >&2 || echo "compose test FAILED" >&2
}
trap teardown EXIT

# --- Settings: tiny renders, short leases -------------------------------------------------
weights_dir="$repo/engine/tests/data"
weights_file=tiny_vgg16.safetensors
frames=6
frame_size=${FRAME_SIZE:-160}
frame_iters=${FRAME_ITERS:-300}
tiled_size=${TILED_SIZE:-256}
tile=${TILE:-128}
overlap=32
tiled_iters=${TILED_ITERS:-150}
lease=4
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
http_port=$(free_port)

export STYLEFARM_PORT=$port STYLEFARM_HTTP_PORT=$http_port STYLEFARM_LEASE_SECONDS=$lease \
    STYLEFARM_WEIGHTS_DIR=$weights_dir STYLEFARM_WEIGHTS_FILE=$weights_file \
    STYLEFARM_WORKER_THREADS=1 STYLEFARM_WORKER_GRACE=30 \
    STYLEFARM_TOKEN_FILE="$work/token" STYLEFARM_COORDINATOR="http://127.0.0.1:$port"
openssl rand -hex 32 >"$STYLEFARM_TOKEN_FILE" 2>/dev/null || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STYLEFARM_TOKEN_FILE"
chmod 644 "$STYLEFARM_TOKEN_FILE"

cli=${STYLEFARM_CLI:-${CARGO_TARGET_DIR:-target}/debug/stylefarm}
[ -x "$cli" ] || cargo build --quiet --bin stylefarm
sf() { "$cli" "$@"; }

# --- Images and the farm -------------------------------------------------------------------
ev "building the images"
deploy/docker/build-images.sh >"$work/images"
ev "images built: $(tr '\n' ' ' <"$work/images")"
compose up -d --scale worker=3 >/dev/null 2>"$work/up.log" || { cat "$work/up.log" >&2; die "compose up"; }
ev "compose up: coordinator + 3 workers (project $project, gRPC on 127.0.0.1:$port, lease ${lease}s)"

# Container of a worker named HOST-PID: its hostname is its container id's first 12 digits.
container_of() { docker ps -aq --no-trunc | grep "^${1%-*}" | head -1; }
# The workers' table: NAME and TASK ("-" when idle) of each, one per line.
worker_tasks() {
    sf workers 2>/dev/null | awk 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { print $col["NAME"], $(col["TASK"] + 1) }'
}
job_state() { sf jobs --limit 100 2>/dev/null | awk -v id="$1" '$1 == id { print $2 }'; }
http_get() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }
metric() { # the coordinator's per-pool demand (the KEDA scaler's metric), one line
    http_get "http://127.0.0.1:$http_port/metrics" 2>/dev/null \
        | grep -E '^stylefarm_pool_demand\{' | tr '\n' ' ' | cut -c1-300
}
wait_for() { # SECONDS WHAT COMMAND...: polls COMMAND until it succeeds
    local until=$((SECONDS + $1)) what=$2
    shift 2
    until "$@"; do
        [ $SECONDS -lt $until ] || die "gave up waiting for $what"
        sleep 0.5
    done
}
n_registered() { [ "$(sf workers 2>/dev/null | tail -n +2 | wc -l)" -ge "$1" ]; }
wait_for 60 "3 workers" n_registered 3
ev "3 workers registered"

# --- Inputs ---------------------------------------------------------------------------------
mkdir -p "$work/frames" "$work/out"
for i in $(seq 1 $frames); do cp examples/tubingen.jpg "$work/frames/frame$i.jpg"; done
content=examples/tubingen.jpg
style=examples/starry_night.jpg
common=(--init content --optimizer lbfgs --seed 1)

submit() { sf submit "$@" 2>"$work/submit.err" || { cat "$work/submit.err" >&2; die "submit $*"; }; }
frames_job=$(submit "$work/frames" "$style" --image-size "$frame_size" --num-iterations "$frame_iters" "${common[@]}" --name frames)
ev "submitted $frames frames (${frame_size}px, $frame_iters iterations): job $frames_job"

# --- Fault 1: a worker killed mid-task --------------------------------------------------------
busy() { worker_tasks | awk '$2 != "-"' | grep -v -e "${skip:-^$}" | head -1; }
has_busy() { [ -n "$(busy)" ]; }
wait_for 60 "a busy worker" has_busy
read -r killed killed_task <<<"$(busy)"
docker kill "$(container_of "$killed")" >/dev/null
ev "docker kill worker $killed while it runs task $killed_task"
skip=$killed

# --- Fault 2: a worker cut off the network until its lease lapses ---------------------------
wait_for 60 "another busy worker" has_busy
read -r cut cut_task <<<"$(busy)"
cut_container=$(container_of "$cut")
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$cut_container")
docker network disconnect "$network" "$cut_container"
ev "docker network disconnect worker $cut (task $cut_task) from $network"
# Its task goes to another worker once the lease lapses.
taken_elsewhere() { worker_tasks | awk -v t="$1" -v w="$2" '$2 == t && $1 != w' | grep -q .; }
leased_again() { [ "$(job_state "$frames_job")" = completed ] || taken_elsewhere "$@"; }
wait_for 90 "task $cut_task to be leased again" leased_again "$cut_task" "$cut"
ev "task $cut_task leased again elsewhere ($(worker_tasks | awk -v t="$cut_task" '$2 == t { print $1 }')) after the lease lapsed; $(metric)"
wait_for 90 "task $killed_task to be leased again" leased_again "$killed_task" "$killed"
ev "task $killed_task of the killed worker leased again elsewhere"
docker network connect "$network" "$cut_container"
ev "docker network connect worker $cut"
refused() {
    docker logs "$cut_container" 2>&1 | grep -E 'no longer counts this lease|refused the result' | tail -1 | grep -q .
}
wait_for 120 "the late result of $cut to be refused" refused
ev "worker $cut: $(docker logs "$cut_container" 2>&1 | grep -oE '(no longer counts this lease|the coordinator refused the result)[^"]*' | tail -1 | tr -d '"')"

frames_done() { [ "$(job_state "$frames_job")" = completed ]; }
wait_for 300 "the frames job" frames_done
ev "frames job completed: $(sf jobs 2>/dev/null | awk -v id="$frames_job" '$1 == id { print $3 }') tasks"
sf fetch "$frames_job" -o "$work/out/frames" 2>/dev/null
ev "fetched $(ls "$work/out/frames" | wc -l) frames"

# --- The tiled image, a second batch, a coordinator restart and scaling ------------------
docker start "$(container_of "$killed")" >/dev/null
tiled_job=$(submit "$content" "$style" --image-size "$tiled_size" --num-iterations "$tiled_iters" \
    --tile-size "$tile" --tile-overlap "$overlap" "${common[@]}" --name tiled)
ev "submitted the lock-step tiled image (${tiled_size}px in ${tile}px tiles, $tiled_iters iterations): job $tiled_job"
batch_job=$(submit "$work/frames" "$style" --image-size "$frame_size" --num-iterations "$frame_iters" "${common[@]}" --name batch2)
ev "submitted a second batch: job $batch_job; $(metric)"

took_new_work() { docker logs "$cut_container" 2>&1 | sed -n '/no longer counts this lease\|refused the result/,$p' | grep -q 'task leased'; }
wait_for 180 "worker $cut to take new work" took_new_work
ev "worker $cut took new work after it rejoined"

compose up -d --no-recreate --scale worker=5 >/dev/null 2>&1
ev "scaled the workers to 5; $(metric)"
wait_for 60 "5 live workers" n_registered 5

active() { [ "$(job_state "$tiled_job")" = active ]; }
wait_for 60 "the tiled job to start" active
sleep 3
docker restart --time 10 "$(compose ps -q coordinator)" >/dev/null
ev "docker restart coordinator"
up() { sf jobs >/dev/null 2>&1; }
wait_for 60 "the coordinator to answer again" up
ev "the coordinator answers again: tiled job $(job_state "$tiled_job") ($(sf jobs 2>/dev/null | awk -v id="$tiled_job" '$1 == id { print $3 }') tasks done), batch $(job_state "$batch_job"), earlier frames job $(job_state "$frames_job")"

workers_now() { docker ps -q --filter "label=com.docker.compose.project=$project" --filter label=com.docker.compose.service=worker | sort; }
before=$(workers_now)
# The logs of every worker, kept past the removal of its container.
mkdir -p "$work/logs"
for c in $before; do docker logs -f "$c" >"$work/logs/$c" 2>&1 & done
compose up -d --no-recreate --scale worker=2 >/dev/null 2>&1
after=$(workers_now)
removed=$(comm -23 <(echo "$before") <(echo "$after"))
ev "scaled the workers back to 2 while the jobs run (tiled $(job_state "$tiled_job"), batch $(job_state "$batch_job")): $(echo "$removed" | wc -w) stopped"
for c in $removed; do
    log="$work/logs/$c"
    grep -q 'SIGTERM' "$log" && grep -q 'worker stopped' "$log" \
        || die "removed worker ${c:0:12} did not stop gracefully: $(tail -3 "$log")"
    ev "  removed worker ${c:0:12}: $(grep -oE '(shutting down: the task may finish[^\"]*|grace period over[^\"]*|task completed|worker stopped)' "$log" | tail -2 | tr '\n' ';')"
done

for job in "$tiled_job" "$batch_job"; do
    done_() { local s; s=$(job_state "$1"); [ "$s" = completed ] || { [ "$s" = failed ] || [ "$s" = canceled ]; } && return 0; return 1; }
    wait_for 600 "job $job" done_ "$job"
    [ "$(job_state "$job")" = completed ] || die "job $job ended $(job_state "$job")"
    ev "job $job completed; $(metric)"
done

# --- Results ---------------------------------------------------------------------------------
sf fetch "$frames_job" -o "$work/out/frames-again" 2>/dev/null
sf fetch "$batch_job" -o "$work/out/batch" 2>/dev/null
sf fetch "$tiled_job" -o "$work/out/tiled.png" 2>/dev/null
ev "fetched the results: the first frames job again after the restart, the second batch, the tiled image"
size_of() { python3 -c 'import struct, sys; d = open(sys.argv[1], "rb").read(24); print("%dx%d" % struct.unpack(">II", d[16:24]))' "$1"; }
frame_dims=$(size_of "$(ls "$work"/out/frames/* | head -1)")
for f in "$work"/out/frames/* "$work"/out/frames-again/* "$work"/out/batch/*; do
    [ "$(size_of "$f")" = "$frame_dims" ] || die "$f is $(size_of "$f"), not $frame_dims"
done
[ "$(ls "$work/out/frames-again" | wc -l)" = $frames ] && [ "$(ls "$work/out/batch" | wc -l)" = $frames ] || die "missing frames"
cmp -s <(cat "$work"/out/frames/*) <(cat "$work"/out/frames-again/*) || die "the frames fetched after the restart differ"
tiled_dims=$(size_of "$work/out/tiled.png")
ev "sizes: $((frames * 3)) frames of $frame_dims, tiled image $tiled_dims"

# The objective of each image as the whole-image render judges it: a render of 0 iterations
# from it, on the host, with the same weights and settings (tests/tests/split.rs' way).
render() { sf render "$content" "$style" --weights "$weights_dir/$weights_file" --image-size "$tiled_size" "$@" 2>>"$work/render.log"; }
render -o "$work/out/untiled.png" --num-iterations "$tiled_iters" "${common[@]}" --threads 2
judge() {
    render -o "$work/out/judged.png" --num-iterations 0 --init "$1" --seed 1 --threads 2 --report "$work/judge.json"
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["final_losses"]["total"])' "$work/judge.json"
}
tiled_objective=$(judge "$work/out/tiled.png")
untiled_objective=$(judge "$work/out/untiled.png")
ratio=$(awk -v a="$tiled_objective" -v b="$untiled_objective" 'BEGIN { printf "%.4f", a / b }')
ev "objective: tiled $tiled_objective, untiled $untiled_objective, ratio $ratio (lock-step tolerance 1.05)"
awk -v r="$ratio" 'BEGIN { exit !(r <= 1.05) }' || die "the tiled image's objective is ${ratio}x the untiled render's"

# --- Metrics and logs --------------------------------------------------------------------------
http_get "http://127.0.0.1:$http_port/metrics" >"$work/metrics" || die "no /metrics from the coordinator"
ev "scraped the coordinator's /metrics: $(grep -vc '^#' "$work/metrics") samples, e.g. $(grep -E '^stylefarm_' "$work/metrics" | head -3 | tr '\n' ' ')"
worker_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(echo "$after" | head -1)")
http_get "http://$worker_ip:9090/metrics" >"$work/worker-metrics" || die "no /metrics from a worker"
ev "scraped a worker's /metrics: $(grep -vc '^#' "$work/worker-metrics") samples"
json_lines=$(compose logs --no-color coordinator 2>/dev/null | sed 's/^[^|]*| //' | grep -c '^{' || true)
ev "the coordinator's log: $json_lines JSON lines, $(compose logs --no-color coordinator 2>/dev/null | grep -ci checkpoint || true) about checkpoints"
status=0
