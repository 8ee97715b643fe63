// Target for lagtrace's culprit tests on express (installed by `cargo xtask
// setup` into target/node-frameworks): a handler whose sync hot path,
// buildReport(), blocks the loop for --stall-ms. A client in the same
// process calls it --count times. Run with and without --perf-basic-prof.
// Protocol: prints "READY <pid>", does nothing until SIGUSR1, writes one
// {"kind":"stall",...} line per stall then {"kind":"done"} to --truth,
// prints "DONE", idles until SIGTERM/SIGINT (exit 0).
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');
const { performance } = require('perf_hooks');
const express = require(path.join(process.env.LAGTRACE_NODE_MODULES, 'express'));

const args = { truth: null, count: 3, stallMs: 120 };
for (let i = 2; i < process.argv.length; i += 2) {
  const v = process.argv[i + 1];
  if (process.argv[i] === '--truth') args.truth = v;
  else if (process.argv[i] === '--count') args.count = Number(v);
  else if (process.argv[i] === '--stall-ms') args.stallMs = Number(v);
}
const nowNs = () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
const truth = fs.openSync(args.truth, 'w');

function buildReport(ms) {
  const deadline = performance.now() + ms;
  let x = 0;
  while (performance.now() < deadline) {
    for (let i = 0; i < 1000; i++) x = (x * 31 + i) % 1000003;
  }
  return x;
}

const app = express();
app.get('/report', (req, res) => {
  const start = nowNs();
  const x = buildReport(args.stallMs);
  fs.writeSync(truth, JSON.stringify({ kind: 'stall', label: 'report', tid: process.pid,
    start_ns: Number(start), end_ns: Number(nowNs()) }) + '\n');
  res.json({ x });
});

const server = app.listen(0, '127.0.0.1', () => {
  const port = server.address().port;
  process.on('SIGUSR1', async () => {
    for (let i = 0; i < args.count; i++) {
      await new Promise((r) => setTimeout(r, 80));
      await new Promise((r) => http.get(`http://127.0.0.1:${port}/report`, (res) => { res.resume(); res.on('end', r); }));
    }
    setTimeout(() => {
      fs.writeSync(truth, JSON.stringify({ kind: 'done' }) + '\n');
      console.log('DONE');
    }, 100);
  });
  for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => { server.close(); process.exit(0); });
  console.log(`READY ${process.pid}`);
});
