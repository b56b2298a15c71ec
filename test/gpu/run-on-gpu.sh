#!/usr/bin/env bash
# GPUs on a machine with a real NVIDIA GPU (the team's H100 box), through the process runtime:
# - a one-node swarm discovers the GPU (UUID, model, memory from nvidia-smi);
# - a `--gpus 1` service runs a task that is handed exactly the allocated GPU: CUDA_VISIBLE_DEVICES is its UUID,
#   `nvidia-smi -L` lists it, and where the host's python3 has PyTorch, torch.cuda.device_count() is 1 and the
#   device's UUID is the allocated one;
# - a service without --gpus gets no GPU (torch.cuda.device_count() is 0);
# - with every GPU taken, another `--gpus 1` service stays pending with the reason and runs once the first is
#   removed.
# Prints what it saw; exits non-zero on the first mismatch.
#
# The machine needs no Node install: carry the bundle and a node binary.
#   npm run build && cp "$(command -v node)" dist/node
#   (on the GPU machine, from the repo root) bash test/gpu/run-on-gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
NODE="${NODE:-dist/node}"
[[ -x "$NODE" ]] || NODE="$(command -v node)"
DATA="$(mktemp -d)"
chmod 755 "$DATA" # tasks run as nobody when swarmd is root
SOCK="$DATA/swarmd.sock"
swarm() { "$NODE" dist/swarm.mjs --host "$SOCK" "$@"; }
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"; }
fail() {
  echo "FAIL: $*" >&2
  echo "== daemon log (last 40 lines)" >&2; tail -40 "$DATA/log" >&2 || true
  exit 1
}
json() { "$NODE" -e "const v=JSON.parse(require('fs').readFileSync(0,'utf8')); console.log($1)"; }
wait_running() {
  for _ in $(seq 300); do swarm service ps "$1" | grep -q Running && return 0; sleep 0.2; done
  return 1
}
# Logs from the process runtime arrive shortly after the task prints them.
wait_logged() {
  for _ in $(seq 150); do swarm service logs "$1" 2>/dev/null | grep -q "$2" && return 0; sleep 0.2; done
  return 1
}

echo "== nvidia-smi -L on the host"; nvidia-smi -L
PY="$(command -v python3 || true)"
TORCH=0
if [[ -n "$PY" ]] && "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  TORCH=1
  echo "== torch on the host: $("$PY" -c 'import torch; print(torch.__version__, torch.cuda.device_count(), "device(s)")')"
else
  echo "== no PyTorch with CUDA on this host: the torch checks are left out"
fi
# Prints the GPUs a CUDA program sees from inside a task: their count and UUIDs.
TORCH_PROBE='import torch; n=torch.cuda.device_count(); print("torch sees", n, "GPU(s):", ",".join("GPU-"+str(torch.cuda.get_device_properties(i).uuid) for i in range(n)))'

"$NODE" dist/swarmd.mjs init --data-dir "$DATA" --listen-addr 127.0.0.1:0 >"$DATA/log" 2>&1 &
PID=$!
trap cleanup EXIT
for _ in $(seq 100); do swarm info >/dev/null 2>&1 && break; sleep 0.2; done
for _ in $(seq 50); do
  [[ "$(swarm node ls --format json | json 'v[0].description.resources.gpus?.length ?? 0')" != 0 ]] && break
  sleep 0.2
done
echo "== advertised GPUs"
advertised="$(swarm node ls --format json | json 'JSON.stringify(v[0].description.resources.gpus)')"
echo "$advertised"
gpus="$(nvidia-smi -L | grep -c 'UUID: GPU-')"
[[ "$(echo "$advertised" | json 'v.length')" == "$gpus" ]] || fail "the node should advertise the host's $gpus GPU(s)"
for uuid in $(nvidia-smi --query-gpu=uuid --format=csv,noheader); do
  echo "$advertised" | grep -q "$uuid" || fail "GPU $uuid is not advertised"
done

# Tasks get a default PATH, not this shell's: name the host's nvidia-smi by its path.
probe="$(command -v nvidia-smi) -L; "'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"'
[[ "$TORCH" == 1 ]] && probe="$probe; $PY -c '$TORCH_PROBE'"
swarm service create --detach --name see-gpu --gpus 1 -- /bin/sh -c "$probe; echo probed; exec sleep 600" >/dev/null
wait_running see-gpu || fail "see-gpu did not start"
wait_logged see-gpu probed || fail "see-gpu printed nothing"
echo "== service ps see-gpu"; swarm service ps see-gpu
echo "== what the --gpus 1 task saw"; swarm service logs see-gpu | tee "$DATA/seen"
allocated="$(swarm service ps see-gpu --format json | json 'v.find(t=>t.status.state==="running").devices[0].ids.join(",")')"
echo "== allocated: $allocated"
[[ "$allocated" == GPU-* && "$allocated" != *,* ]] || fail "the task should hold one GPU by UUID, not '$allocated'"
grep -q "CUDA_VISIBLE_DEVICES=$allocated\$" "$DATA/seen" || fail "CUDA_VISIBLE_DEVICES should be $allocated"
grep -q "UUID: $allocated" "$DATA/seen" || fail "nvidia-smi -L in the task does not list $allocated"
if [[ "$TORCH" == 1 ]]; then
  grep -q "torch sees 1 GPU(s): $allocated\$" "$DATA/seen" || fail "torch in the task should see exactly $allocated"
fi

if [[ "$TORCH" == 1 ]]; then
  swarm service create --detach --name no-gpu -- /bin/sh -c "$PY -c '$TORCH_PROBE'; echo probed; exec sleep 600" >/dev/null
  wait_logged no-gpu probed || fail "no-gpu printed nothing"
  echo "== what a task without --gpus saw"; swarm service logs no-gpu | tee "$DATA/seen-none"
  grep -q "torch sees 0 GPU(s)" "$DATA/seen-none" || fail "a task without --gpus should see no GPU"
  swarm service rm no-gpu >/dev/null
fi

for i in $(seq 2 "$gpus"); do swarm service create --detach --name "fill-$i" --gpus 1 -- /bin/sleep 600 >/dev/null; done
swarm service create --detach --name wait-gpu --gpus 1 -- /bin/sleep 600 >/dev/null
for _ in $(seq 50); do swarm service ps wait-gpu | grep -q 'insufficient GPUs' && break; sleep 0.2; done
echo "== service ps wait-gpu (all GPUs taken)"; swarm service ps wait-gpu
swarm service ps wait-gpu | grep -q 'insufficient GPUs' || fail "wait-gpu should be pending for GPUs"
swarm service rm see-gpu >/dev/null
wait_running wait-gpu || fail "wait-gpu should run once a GPU is free"
echo "== service ps wait-gpu (after see-gpu was removed)"; swarm service ps wait-gpu
[[ "$(swarm service ps wait-gpu --format json | json 'v.find(t=>t.status.state==="running").devices[0].ids[0]')" == "$allocated" ]] ||
  fail "wait-gpu should hold the GPU see-gpu gave back ($allocated)"
echo "PASS"
