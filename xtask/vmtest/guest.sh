#!/bin/bash
# Runs inside a vmtest guest, chrooted into the host's root (shared
# read-only, with a tmpfs overlay): each line of the plan is
# `NAME TEST-BINARY [FILTER…]`, run as the host would run it. The host reads
# the `vmtest: ` lines from the serial console.
set -u
plan=$1
export HOME=/root PYTHONDONTWRITEBYTECODE=1 TMPDIR=/tmp RUST_BACKTRACE=1
export PATH=/root/.cargo/bin:/root/.pyenv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Tests run from the lagtrace package, as `cargo test` runs them.
cd "$(dirname "$0")/../../lagtrace" || exit 1
# Under TCG the loop's own code runs tens of times slower than on hardware;
# the accuracy tests widen their bar by this much (see tests/common).
if grep -q 'vmtest.accel=tcg' /proc/cmdline; then
    export LAGTRACE_TEST_EMULATION_SLACK_MS=100
fi
# The host built the test apps before boot.
export LAGTRACE_TEST_PREBUILT=1
# Per test binary, well under the host's limit per kernel.
limit=$(sed -n 's/.*vmtest.limit=\([0-9]*\).*/\1/p' /proc/cmdline)
limit=${limit:-420}
echo "vmtest: guest-start kernel=$(uname -r) cpus=$(nproc)"
while read -r name bin filters; do
    [ -z "$name" ] && continue
    start=$(date +%s)
    echo "vmtest: start $name"
    # shellcheck disable=SC2086 # filters are separate words
    # --nocapture: a test that skips says so (SKIP …) even when it passes.
    # `timeout` runs the binary in its own process group and kills the whole
    # group (targets, lagtrace) at the limit: a test waiting on a target that
    # never answers ends as a failure (rc 124/137), not a stuck guest.
    timeout -k 10 "$limit" "$bin" --test-threads=1 --nocapture --exact $filters \
        </dev/null >"/tmp/$name.log" 2>&1 &
    pid=$!
    # The test's output goes to the console as it comes (the host shows it
    # with --verbose, and its tail when a guest times out); a file and
    # `tail --pid` rather than a pipe, so a leftover child holding the
    # output open cannot keep the loop waiting.
    tail -n +1 -s 0.5 --pid=$pid -f "/tmp/$name.log" | sed -u -e 's/^\(.\{0,300\}\).*/\1/' -e "s/^/vmtest: out $name: /"
    wait $pid
    rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "vmtest: log $name: killed after the ${limit} s limit per test binary"
    secs=$(($(date +%s) - start))
    if [ $rc -ne 0 ]; then
        # Each panic's message whole, folded for the console (the lines
        # above cut a span's JSON; the guest's files die with it).
        awk '/panicked at/ {on=1; next} /^stack backtrace:|^note: / {on=0} on' "/tmp/$name.log" |
            fold -w 400 | head -n 300 | sed "s/^/vmtest: panic $name: /"
        # Each panic first (a test that failed early is out of the tail).
        grep -E -A3 'panicked' "/tmp/$name.log" | head -n 24 |
            cut -c1-400 | sed "s/^/vmtest: log $name: /"
        grep -E -A2 'panicked|NOTE|SKIP|error|stall|assert|left|right|^test ' "/tmp/$name.log" |
            cut -c1-400 | sed "s/^/vmtest: log $name: /" | tail -n 40
    fi
    passed=$(grep -o '[0-9]* passed' "/tmp/$name.log" | awk '{s+=$1} END {print s+0}')
    failed=$(grep -o '[0-9]* failed' "/tmp/$name.log" | awk '{s+=$1} END {print s+0}')
    # A skip line may follow the harness's `test NAME ... ` on one line.
    # `SKIP NAME: why` is a test that skipped whole; `SKIP NAME PART: why`
    # one that skipped a part (a refused attach mode, a missing Python) and
    # ran the rest.
    skipped=$(grep -o 'SKIP [a-z0-9_]*:' "/tmp/$name.log" | sort -u | wc -l)
    partly=$(grep -o 'SKIP [a-z0-9_]* [^:]*:' "/tmp/$name.log" | awk '{print $2}' | sort -u | wc -l)
    # What `--attach auto` chose (tests/attach_modes.rs), for the table.
    grep -o 'auto chose [a-z_]*' "/tmp/$name.log" | sed 's/^auto chose /vmtest: attach /'
    # And every mode it traced the stall scenarios in.
    grep -o 'attach modes checked on this kernel: .*' "/tmp/$name.log" |
        sed 's/^attach modes checked on this kernel: /vmtest: modes /'
    grep -o 'SKIP [a-z0-9_]*:.*' "/tmp/$name.log" | cut -c1-300 | sed "s/^/vmtest: skip $name: /"
    grep -o 'SKIP [a-z0-9_]* [^:]*:.*' "/tmp/$name.log" | cut -c1-300 | sort -u |
        sed "s/^/vmtest: skip part $name: /"
    echo "vmtest: result $name rc=$rc passed=$passed failed=$failed skipped=$skipped partly=$partly secs=$secs"
done <"$plan"
