#!/usr/bin/env bash
# GPUs on a machine with a real NVIDIA GPU (the team's H100 box): a one-node swarm discovers the GPU, a
# `--gpus 1` service runs a task that sees exactly that GPU (`nvidia-smi -L` inside it lists one UUID, the one
# the scheduler allocated), a second `--gpus 1` service stays pending with the reason and runs once the first
# is removed. Prints what it saw; exits non-zero on the first mismatch.
#
# The machine needs no Node install: carry the bundle and a node binary.
#   npm run build && cp "$(command -v node)" dist/node
#   (on the GPU machine, from the repo root) bash test/gpu/run-on-gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
NODE="${NODE:-dist/node}"
[[ -x "$NODE" ]] || NODE="$(command -v node)"
DATA="$(mktemp -d)"
SOCK="$DATA/swarmd.sock"
swarm() { "$NODE" dist/swarm.mjs --host "$SOCK" "$@"; }
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== nvidia-smi -L on the host"; nvidia-smi -L
"$NODE" dist/swarmd.mjs init --data-dir "$DATA" --listen-addr 127.0.0.1:0 >"$DATA/log" 2>&1 &
PID=$!
trap cleanup EXIT
for _ in $(seq 100); do swarm info >/dev/null 2>&1 && break; sleep 0.2; done
sleep 2
echo "== advertised GPUs"
swarm node ls --format json | "$NODE" -e 'const n=JSON.parse(require("fs").readFileSync(0,"utf8"))[0]; console.log(JSON.stringify(n.description.resources.gpus))'

swarm service create --detach --name see-gpu --gpus 1 -- /bin/sh -c 'nvidia-smi -L; echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; exec sleep 600' >/dev/null
for _ in $(seq 150); do swarm service ps see-gpu | grep -q Running && break; sleep 0.2; done
sleep 2
echo "== service ps see-gpu"; swarm service ps see-gpu
echo "== what the task saw"; swarm service logs see-gpu | tee "$DATA/seen"
allocated="$(swarm service ps see-gpu --format json | "$NODE" -e 'const t=JSON.parse(require("fs").readFileSync(0,"utf8")).find(t=>t.status.state==="running"); console.log(t.devices[0].ids.join(","))')"
[[ "$(grep -c 'UUID: GPU-' "$DATA/seen")" == 1 ]] || fail "the task should see exactly one GPU"
grep -q "$allocated" "$DATA/seen" || fail "the task sees a GPU other than the allocated $allocated"

gpus="$(nvidia-smi -L | wc -l)"
for i in $(seq 2 "$gpus"); do swarm service create --detach --name fill-$i --gpus 1 -- /bin/sleep 600 >/dev/null; done
swarm service create --detach --name wait-gpu --gpus 1 -- /bin/sleep 600 >/dev/null
sleep 3
echo "== service ps wait-gpu (all GPUs taken)"; swarm service ps wait-gpu
swarm service ps wait-gpu | grep -q 'insufficient GPUs' || fail "wait-gpu should be pending for GPUs"
swarm service rm see-gpu >/dev/null
for _ in $(seq 150); do swarm service ps wait-gpu | grep -q Running && break; sleep 0.2; done
echo "== service ps wait-gpu (after see-gpu was removed)"; swarm service ps wait-gpu
swarm service ps wait-gpu | grep -q Running || fail "wait-gpu should run once a GPU is free"
echo "PASS"
