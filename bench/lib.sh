# Shell helpers shared by the benchmark drivers (bench/run, bench/php/run, bench/cluster/run):
# free loopback ports for the servers they start, and waiting until a server listens.
# Source it; it defines functions only.

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
