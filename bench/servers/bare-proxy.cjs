// Baseline "bare proxy" (the shared bench's target A, with this repo's dependencies): Express 5 +
// express.json(), forwards POST /v1/chat/completions to one upstream with undici.request and
// pipes the answer back. No routing, no retry: the floor relay() + distributor() is compared with.
//   PORT=18402 UPSTREAM=http://127.0.0.1:18401 node bench/servers/bare-proxy.cjs
'use strict';
const express = require('express');
const { pipeline } = require('node:stream/promises');
const { Agent, request } = require('undici');

const PORT = Number(process.env.PORT || 18402);
const UPSTREAM = (process.env.UPSTREAM || 'http://127.0.0.1:18401').replace(/\/$/, '');
const URL_CHAT = `${UPSTREAM}/v1/chat/completions`;
const agent = new Agent({ keepAliveTimeout: 30_000, keepAliveMaxTimeout: 60_000 });

const app = express();
app.set('etag', false);
app.post('/v1/chat/completions', express.json({ limit: '1mb' }), async (req, res) => {
  try {
    const up = await request(URL_CHAT, {
      method: 'POST',
      dispatcher: agent,
      headers: { 'content-type': 'application/json', authorization: req.get('authorization') || 'Bearer sk-mock' },
      body: JSON.stringify(req.body),
    });
    res.status(up.statusCode);
    const ct = up.headers['content-type'];
    if (ct) res.set('content-type', ct);
    const cl = up.headers['content-length'];
    if (cl) res.set('content-length', cl);
    await pipeline(up.body, res);
  } catch (err) {
    if (!res.headersSent) res.status(502).json({ error: { message: 'upstream error', type: 'bad_gateway' } });
    else res.destroy(err);
  }
});
const server = app.listen(PORT, '127.0.0.1');
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { server.close(); process.exit(0); });
