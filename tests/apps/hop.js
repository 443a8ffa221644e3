// One hop of a test call chain on Node's http module alone: an event-loop
// server and http.request with a keep-alive agent for the next hop.
// GET /x?q -> "<pod>" or "<pod> -> <answer of --next>"; with --echo-query
// the pod name is followed by "(<query>)". It copies no header, except
// the request ids (x-request-id, traceparent, b3) with --forward-id, as apps
// with tracing middleware (OpenTelemetry, Zipkin) do.
'use strict';
const http = require('http');

let port = 8080;
let next = null;
let echo = false;
let forwardId = false;
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--port') port = Number(args[++i]);
  else if (args[i] === '--next') next = args[++i];
  else if (args[i] === '--echo-query') echo = true;
  else if (args[i] === '--forward-id') forwardId = true;
  else throw new Error(`unknown argument ${args[i]}`);
}
const name = process.env.TAGGER_POD || 'hop';
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

http.createServer((req, res) => {
  const query = req.url.includes('?') ? req.url.slice(req.url.indexOf('?') + 1) : '';
  const self = echo ? `${name}(${query})` : name;
  const reply = (text) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
  if (!next) return reply(self);
  const headers = {};
  if (forwardId) {
    for (const id of ['x-request-id', 'traceparent', 'b3']) {
      if (req.headers[id]) headers[id] = req.headers[id];
    }
  }
  http.get(next + req.url.slice(1), { agent, headers }, (upstream) => {
    let body = '';
    upstream.setEncoding('utf8');
    upstream.on('data', (chunk) => { body += chunk; });
    upstream.on('end', () => reply(`${self} -> ${body}`));
  }).on('error', (e) => reply(`${self} -> ERROR(${e.message})`));
}).listen(port, '0.0.0.0');
