#!/bin/bash
# Runs inside a vmtest guest for `cargo xtask vmtest --bench` (issue #15,
# "Measure"): what each attach mode costs, as ratios taken in the same guest
# run. Per round: no lagtrace, then lagtrace attached to the idle asyncio
# HTTP server in each mode; in each state the getppid loop (another process,
# untraced: the host-wide cost per syscall) and wrk against the server (its
# throughput). The host reads the `vmtest: bench ` lines; it only measures,
# nothing is asserted here.
set -u
params=$1
get() { sed -n "s/^$1 //p" "$params"; }
lagtrace=$(get lagtrace)
getppid=$(get getppid)
python=$(get python)
server=$(get server)
modes=$(get modes)
rounds=$(get rounds)
calls=$(get calls)
secs=$(get secs)
export HOME=/root TMPDIR=/tmp PYTHONDONTWRITEBYTECODE=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "vmtest: guest-start kernel=$(uname -r) cpus=$(nproc)"

# Waits up to $3 s for a line matching $2 in file $1 while pid $4 lives.
wait_line() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

median() { sort -n | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]; else print "nan"}'; }

"$python" "$server" </dev/null >/tmp/server.out 2>/tmp/server.err &
srv=$!
if ! wait_line /tmp/server.out '^READY' 120 $srv; then
    echo "vmtest: guest-error the asyncio server did not start: $(tail -n 3 /tmp/server.err)"
    exit 1
fi
port=$(awk '/^READY/ {print $3; exit}' /tmp/server.out)

# utime + stime of pid $1, in clock ticks (0 if it is gone).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Waits (at most 30 s) until pid $1 uses under 15 % of a CPU: lagtrace reads
# the target's unwind tables after it says it is tracing, and then settles
# at a few % of an emulated CPU (its drain ticks).
settle() {
    local i a b
    for ((i = 0; i < 30; i++)); do
        a=$(ticks "$1")
        sleep 1
        b=$(ticks "$1")
        [ $((b - a)) -le 15 ] && return
    done
}

# One measurement in the current state, labelled $1; $2 is lagtrace's pid
# (its CPU over the measurement is reported in ticks per second).
measure() {
    local ns rps t0 t1 s0 s1
    t0=$(ticks "${2:-0}")
    s0=$(date +%s%N)
    ns=$(for _ in 1 2 3 4 5; do "$getppid" "$calls"; done | sed -n 's/^NS_PER_CALL //p' | median)
    rps=$(wrk -t1 -c8 -d"${secs}s" "http://127.0.0.1:$port/" | sed -n 's/^Requests\/sec: *//p')
    t1=$(ticks "${2:-0}")
    s1=$(date +%s%N)
    echo "vmtest: bench round=$r mode=$1 getppid_ns=$ns rps=${rps:-nan} lagtrace_cpu_pct=$(((t1 - t0) * 100000000000 / (s1 - s0) / 100))"
}

# Warm-up: the first requests fill the page cache and the emulator's
# translation cache for the server's code.
wrk -t1 -c8 -d"${secs}s" "http://127.0.0.1:$port/" >/dev/null

refused=" "
for ((r = 1; r <= rounds; r++)); do
    measure none
    for m in $modes; do
        case "$refused" in *" $m "*) continue ;; esac
        # `NAME-F0`: the same mode without the on-CPU sampling clock, to
        # tell the hooks' cost from the sampling's.
        case "$m" in
        *-F0) args=(--attach "${m%-F0}" -F 0) ;;
        *) args=(--attach "$m") ;;
        esac
        "$lagtrace" --pid "$srv" "${args[@]}" </dev/null >"/tmp/lt-$m.out" 2>"/tmp/lt-$m.err" &
        lt=$!
        # Its start line on stderr says it is attached; loading and verifying
        # the programs on an emulated CPU takes a while.
        if ! wait_line "/tmp/lt-$m.err" '^lagtrace: tracing' 300 $lt; then
            kill -KILL $lt 2>/dev/null
            wait $lt 2>/dev/null
            echo "vmtest: bench round=$r mode=$m refused: $(grep -v '^$' "/tmp/lt-$m.err" | tail -n 1 | cut -c1-200)"
            refused="$refused$m "
            continue
        fi
        # What lagtrace said at start (its mode, any fallback such as a
        # per-CPU sampling clock), for the reader of the console.
        grep -E '^lagtrace: tracing|WARN|warning' "/tmp/lt-$m.err" | cut -c1-240 |
            sed "s/^/vmtest: bench-note round=$r mode=$m: /"
        settle $lt
        measure "$m" $lt
        kill -INT $lt
        wait $lt
    done
done
kill -TERM $srv
wait $srv
