// Benchmark target: a minimal Node.js HTTP server (node 20, no npm) answering
// every request with a small fixed body, keep-alive. It is what lagtrace's
// overhead on a libuv loop is measured on.
//
// Listens on 127.0.0.1, on an ephemeral port; prints "READY <pid> <port>" on
// stdout once listening; runs until SIGTERM/SIGINT and exits 0.
'use strict';
const http = require('http');

const BODY = Buffer.from('hello from node\n');

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': BODY.length });
  res.end(BODY);
});
server.keepAliveTimeout = 60000;

server.listen(0, '127.0.0.1', () => {
  console.log(`READY ${process.pid} ${server.address().port}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
