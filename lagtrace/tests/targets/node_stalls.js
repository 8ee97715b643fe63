// Target for lagtrace's integration tests on Node.js (20, no npm packages):
// on SIGUSR1 the main thread's libuv loop is blocked by blockTheLoop(ms), a
// synchronous busy-spin, once per --stalls-ms entry, --gap-ms apart. Each
// stall's wall-clock window goes to --truth as a JSON line, so the tests can
// compare lagtrace's output to it. Also run under `node --perf-basic-prof`.
//
// Protocol: prints "READY <pid>", injects nothing until SIGUSR1, then writes
// {"kind":"stall",...} lines and {"kind":"done"}, prints "DONE", and idles
// until SIGTERM/SIGINT (exit 0). tid is process.pid: the main thread's tid.
// Labels are "spin-<index>-<ms>ms". Note: libuv waits in epoll_pwait, not
// epoll_wait.
//
// Wall clock: performance.timeOrigin + performance.now(), in ns. Date.now()
// is only ms; this sum has ~1 µs resolution (timeOrigin is a double in ms
// with µs digits, read once at start-up) and was measured within ~50 µs of
// CLOCK_REALTIME. process.hrtime alone is monotonic, not wall time.
'use strict';
const fs = require('fs');
const { performance } = require('perf_hooks');

function parseArgs(argv) {
  const args = { stallsMs: [40, 60, 120, 300], gapMs: 250, truth: null };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (argv[i] === '--truth') { args.truth = v; i++; }
    else if (argv[i] === '--stalls-ms') { args.stallsMs = v.split(',').filter(Boolean).map(Number); i++; }
    else if (argv[i] === '--gap-ms') { args.gapMs = Number(v); i++; }
    else { process.stderr.write(`unknown argument ${argv[i]}\n`); process.exit(2); }
  }
  if (!args.truth) { process.stderr.write('--truth FILE is required\n'); process.exit(2); }
  return args;
}

const originNs = BigInt(Math.round(performance.timeOrigin * 1e6));
function wallNs() {
  return originNs + BigInt(Math.round(performance.now() * 1e6));
}

// Synchronous busy-spin: blocks the event loop for `ms` milliseconds.
function blockTheLoop(ms) {
  const deadline = performance.now() + ms;
  let x = 0;
  while (performance.now() < deadline) {
    for (let i = 0; i < 1000; i++) x = (x * 31 + i) % 1000003;
  }
  return x;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function main() {
  const args = parseArgs(process.argv.slice(2));
  const truthFd = fs.openSync(args.truth, 'w');
  const writeTruth = (line) => fs.writeSync(truthFd, line + '\n'); // unbuffered
  let started = false;

  // BigInt is not JSON-serialisable: build the line by hand.
  const stallLine = (i, ms, startNs, endNs) =>
    `{"kind":"stall","label":"spin-${i}-${ms}ms","tid":${process.pid},` +
    `"start_ns":${startNs},"end_ns":${endNs}}`;

  async function injectStalls() {
    for (let i = 0; i < args.stallsMs.length; i++) {
      const ms = args.stallsMs[i];
      if (i > 0) await sleep(args.gapMs);
      const startNs = wallNs();
      blockTheLoop(ms);
      const endNs = wallNs();
      writeTruth(stallLine(i, ms, startNs, endNs));
    }
    writeTruth('{"kind":"done"}');
    fs.writeSync(1, 'DONE\n');
  }

  // Listening for SIGUSR1 also stops Node from starting its inspector on it.
  // The first signal's iteration compiles JS on-CPU (V8's parser and
  // bytecode generator, under Node's signal dispatch), more the longer the
  // process ran before it: measured under --perf-basic-prof, 0.3-0.7 ms
  // when signalled at once, 2-4 ms after 1 s, 7-10 ms after 3-6 s. A
  // stall started from that iteration (as an immediate did) carried it
  // outside its truth window. So the stalls start from a timer, in an
  // iteration that began after the loop waited in epoll again: libuv adds
  // to the loop's idle time only after a wait that could block, so the
  // timer re-arms until that idle time has grown since the signal.
  const idleMs = () => performance.eventLoopUtilization().idle;
  const startAfterAWait = (idleAtSignal) => {
    if (idleMs() > idleAtSignal) injectStalls();
    else setTimeout(startAfterAWait, 20, idleAtSignal);
  };
  // The code on both sides of each stall's clock reads, compiled before
  // READY.
  blockTheLoop(0);
  stallLine(0, 0, wallNs(), wallNs());
  sleep(0);
  process.on('SIGUSR1', () => {
    if (!started) { started = true; setTimeout(startAfterAWait, 20, idleMs()); }
  });
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
  setInterval(() => {}, 5); // healthy heartbeat: the loop wakes every 5 ms
  setImmediate(() => fs.writeSync(1, `READY ${process.pid}\n`));
}

main();
