// Middleware-overhead server: Express + express.json() + a fixed JSON reply, with or without
// distributor() in front. Uses the built package (dist/). Listens on 127.0.0.1:$PORT.
//   MODE=bare|memory|redis PORT=18300 [REDIS_URL=redis://127.0.0.1:6379] node bench/servers/middleware-app.cjs
'use strict';
const express = require('express');
// DIST points at another build (e.g. an older commit's dist/) for before/after comparisons.
const path = require('node:path');
const DIST = process.env.DIST || path.join(__dirname, '..', '..', 'dist');
const { distributor, MemoryStore } = require(DIST);
// 0.2 moved RedisStore to the /redis entry (dist/entry/redis.js); a 0.1 build has it in the main entry
const { RedisStore } = (() => {
  try {
    return require(path.join(DIST, 'entry', 'redis'));
  } catch {
    return require(DIST);
  }
})();

// MODE: bare | noop* | memory | redis, optionally `+<strategy>` (least-busy, lowest-latency,
// least-usage) or `+limits` (rpm and maxConcurrency on every channel): `memory+least-busy`.
const [MODE, VARIANT] = (process.env.MODE || 'bare').split('+');
const PORT = Number(process.env.PORT || 18300);
const REPLY = Buffer.from(JSON.stringify({
  id: 'resp-mock', object: 'response', created: 1700000000, model: 'gpt-4o-mini',
  output: [{ type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'Hello' }] }],
}));

// 20 channels over 3 tiers, weights 1..5, all serving the bench model.
const channels = Array.from({ length: 20 }, (_, i) => ({
  id: i + 1, name: `ch${i + 1}`, models: 'gpt-4o-mini,gpt-5', priority: [10, 5, 0][i % 3], weight: (i % 5) + 1,
  baseUrl: 'http://127.0.0.1:1', key: `sk-bench-${i + 1}`,
}));

async function main() {
  const app = express();
  app.set('etag', false);
  app.use(express.json({ limit: '1mb' }));
  // For the soak bench: heap after a full GC (when started with --expose-gc) and the pin count.
  app.get('/__heap', (_req, res) => {
    if (global.gc) global.gc();
    res.json({ heapUsed: process.memoryUsage().heapUsed, rss: process.memoryUsage().rss, pins: memoryStore ? memoryStore.pinCount : null });
  });
  let client;
  let memoryStore;
  // Reference points for the cost of any middleware: one that calls next() at once, one that
  // calls it from a resolved promise (as an async middleware does), and one that waits for the
  // next event-loop turn (as a middleware waiting on a network round trip does).
  if (MODE === 'noop') app.use((_req, _res, next) => next());
  else if (MODE === 'noop-async') app.use((_req, _res, next) => { Promise.resolve().then(() => next()); });
  else if (MODE === 'noop-immediate') app.use((_req, _res, next) => { setImmediate(next); });
  else if (MODE !== 'bare') {
    let store;
    if (MODE === 'redis') {
      const { createClient } = require('redis');
      client = createClient({ url: process.env.REDIS_URL || 'redis://127.0.0.1:6379' });
      client.on('error', () => {});
      await client.connect();
      store = new RedisStore({ client, prefix: `ecd-bench-${process.pid}:` });
    } else {
      store = memoryStore = new MemoryStore();
    }
    // default affinity rules on (codex cli trace matches /v1/responses + prompt_cache_key)
    const limited = VARIANT === 'limits' ? channels.map((c) => ({ ...c, limits: { rpm: 1e9, maxConcurrency: 1e6 } })) : channels;
    const selection = VARIANT && VARIANT !== 'limits' ? { selection: { strategy: VARIANT } } : {};
    app.use(distributor({ channels: limited, store, retry: { times: 2 }, ...selection }));
  }
  app.post('/v1/responses', (req, res) => {
    res.type('application/json').send(REPLY);
  });
  const server = app.listen(PORT, '127.0.0.1', () => console.log(`middleware-app ${MODE} on ${PORT}`));
  server.keepAliveTimeout = 65_000;
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => {
      server.close();
      if (client) client.quit().catch(() => {});
      process.exit(0);
    });
  }
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
