# Shell helpers shared by the benchmark drivers (bench/run, bench/php/run, bench/cluster/run):
# free loopback ports for the servers they start, waiting until a server listens, and the
# machine conditions runs are measured under. Source it; it defines functions and CONDITIONS.

# A loopback port nothing listens on now, below the ephemeral range (32768+), where an
# outgoing connection could take it before the server binds it.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# Waits up to 10 s until something accepts connections on loopback port $1.
wait_for_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "${0#./}: nothing listens on port $1" >&2
  return 1
}

# The machine conditions a run measures: "idle", and "busy" = one core kept busy by a plain
# shell loop. On this kind of VM an idle vCPU is slow to wake (~50 µs), which hides a
# request's real cost in round-trip times; with a core busy, wake-ups are fast, as on a
# loaded production host. Ratios are reported for both (BENCHMARKS.md).
CONDITIONS=${CONDITIONS:-idle busy}

# The words a record's case gets for condition $1 (nothing for idle).
condition_words() {
  [[ "$1" == busy ]] && echo "one core busy" || true
}

# Starts the busy loop of condition $1 (if any); busy_core_stop ends it.
busy_core_pid=""
busy_core_start() {
  if [[ "$1" == busy ]]; then
    bash -c 'while :; do :; done' &
    busy_core_pid=$!
  fi
}
busy_core_stop() {
  if [[ -n "$busy_core_pid" ]]; then
    kill "$busy_core_pid" 2>/dev/null || true
    wait "$busy_core_pid" 2>/dev/null || true
    busy_core_pid=""
  fi
}
