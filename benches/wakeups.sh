#!/bin/bash
# Thread handoffs per transaction in a sipguard build (benches/README.md): the stand-in PBX and
# the build on loopback, clean traffic at 10,000/s for 5 s, `perf stat` on the build's process.
# Usage: benches/wakeups.sh BINARY [VAR=VALUE..]   (root; release harness built)
set -eu
cd "$(dirname "$0")/.."
binary=$1
shift
bench="${CARGO_TARGET_DIR:-target}/release/sipguard-bench"
dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pbx_port=$(free_port)
edge_port=$(free_port)
sed -e "s/@ADDR@/127.0.0.1/; s/@PORT@/$pbx_port/; s#@RUNDIR@#$dir#; s/@PBX@//" benches/pbx.cfg >"$dir/pbx.cfg"
cat >"$dir/sipguard.yaml" <<EOC
listen:
  udp: ["127.0.0.1:$edge_port"]
  tcp: []
pbx:
  address: 127.0.0.1:$pbx_port
metrics:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
journal:
  path: $dir/bans.journal
EOC
setsid kamailio -DD -E -f "$dir/pbx.cfg" 2>"$dir/pbx.log" &
pbx=$!
env "$@" RUST_LOG=warn setsid "$binary" run --config "$dir/sipguard.yaml" 2>"$dir/sipguard.log" &
edge=$!
stop() {
    kill -TERM -- "-$edge" "-$pbx" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap stop EXIT
sleep 1.5
"$bench" load "127.0.0.1:$edge_port" 2000 1 >/dev/null
# Per thread name: voluntary and involuntary switches so far.
switches() {
    for task in /proc/$edge/task/*; do
        printf '%s %s %s\n' "$(cat "$task/comm")" \
            "$(awk '/^voluntary_ctxt/ {print $2}' "$task/status")" \
            "$(awk '/^nonvoluntary_ctxt/ {print $2}' "$task/status")"
    done | awk '{v[$1] += $2; n[$1] += $3} END {for (k in v) print k, v[k], n[k]}' | LC_ALL=C sort
}
switches >"$dir/before"
perf stat -e 'syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,sched:sched_switch,sched:sched_wakeup' \
    -p "$edge" -o "$dir/perf.txt" -- sleep 6 &
perf=$!
sleep 0.3
"$bench" load "127.0.0.1:$edge_port" 10000 5
wait "$perf"
switches >"$dir/after"
LC_ALL=C join "$dir/before" "$dir/after" | awk '{printf "thread %s: %d voluntary, %d involuntary switches\n", $1, $4 - $2, $5 - $3}'
grep -E 'futex|epoll|sched' "$dir/perf.txt"
