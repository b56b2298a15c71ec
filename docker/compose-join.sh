#!/bin/sh
# Entry point of the services of docker/compose.yaml: how the workers of a local swarm get their join token.
#
# The command is a plain swarmd command line; this script only adds what compose cannot know in advance:
#   compose-join.sh swarmd init [FLAGS...]
#       The manager. Starts `swarmd init FLAGS...`, waits for its control socket, writes the worker join token
#       to $SWARMD_JOIN_DIR/worker-token (the volume every service mounts at /shared), then waits on swarmd
#       (SIGTERM and SIGINT are passed on to it).
#   compose-join.sh swarmd join [FLAGS...] MANAGER:PORT
#       A worker. Waits (up to $SWARMD_JOIN_WAIT seconds, default 120) for that token file, then runs
#       `swarmd join --token TOKEN FLAGS... MANAGER:PORT` in its place.
#   compose-join.sh anything else
#       Runs it as given.
# A container restarted after it joined (node.json in $SWARMD_DATA_DIR) runs `swarmd run` instead of init or
# join: the listen and advertise addresses are kept in the data dir. The manager publishes the token again
# then, so a rotated token reaches workers that join later.
#
# Environment: SWARMD_DATA_DIR (default /data), SWARMD_JOIN_DIR (default /shared), SWARMD_JOIN_WAIT (seconds).
set -eu

data_dir="${SWARMD_DATA_DIR:-/data}"
join_dir="${SWARMD_JOIN_DIR:-/shared}"
token_file="$join_dir/worker-token"
wait_s="${SWARMD_JOIN_WAIT:-120}"

say() { printf 'compose-join: %s\n' "$*" >&2; }

if [ "${1:-}" != swarmd ]; then
  exec "$@"
fi
shift
verb="${1:-}"

case "$verb" in
init)
  if [ -f "$data_dir/node.json" ]; then
    say "$data_dir already belongs to a swarm: swarmd run"
    set -- run
  fi
  swarmd "$@" &
  pid=$!
  trap 'kill -TERM "$pid" 2>/dev/null || true' TERM INT
  tries=0
  until token="$(swarm join-token -q worker 2>/dev/null)"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      status=0
      wait "$pid" || status=$?
      say "swarmd exited ($status) before its control socket answered"
      exit "$status"
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt $((wait_s * 2)) ]; then
      say "no answer on the control socket after ${wait_s}s; stopping swarmd"
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" || true
      exit 1
    fi
    sleep 0.5
  done
  # Written whole, then renamed: a worker never reads half a token.
  (umask 077 && printf '%s\n' "$token" >"$token_file.tmp")
  mv -f "$token_file.tmp" "$token_file"
  say "worker join token written to $token_file"
  # A trapped signal ends `wait` early: wait again until swarmd has really exited, and exit with its status.
  status=0
  wait "$pid" || status=$?
  while kill -0 "$pid" 2>/dev/null; do
    status=0
    wait "$pid" || status=$?
  done
  exit "$status"
  ;;
join)
  if [ -f "$data_dir/node.json" ]; then
    say "$data_dir already belongs to a swarm: swarmd run"
    exec swarmd run
  fi
  shift
  tries=0
  until [ -s "$token_file" ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt $((wait_s * 2)) ]; then
      say "no worker join token in $token_file after ${wait_s}s (is the manager up?)"
      exit 1
    fi
    sleep 0.5
  done
  token="$(cat "$token_file")"
  say "joining with the token from $token_file"
  exec swarmd join --token "$token" "$@"
  ;;
*)
  exec swarmd "$@"
  ;;
esac
