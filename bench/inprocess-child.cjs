// One measurement for bench/inprocess.ts (plain JS, so no TypeScript loader wraps the harness):
//   node bench/inprocess-child.cjs <dist dir> <hit|miss|plain> <requests>   -> ns per request
'use strict';
const path = require('node:path');
const { EventEmitter } = require('node:events');

const [dist, mode, nText] = process.argv.slice(2);
const n = Number(nText);
const lib = require(path.resolve(dist, 'index.js'));
// STRATEGY: weighted (default) | least-busy | lowest-latency | least-usage; LIMITS=1 gives every
// channel { rpm, maxConcurrency } (counted in the MemoryStore). Builds before 0.2 ignore both.
const strategy = process.env.STRATEGY || 'weighted';
const limits = process.env.LIMITS === '1' ? { limits: { rpm: 1e9, maxConcurrency: 1e6 } } : {};
const channels = Array.from({ length: 20 }, (_, i) => ({ id: i + 1, models: 'gpt-5', priority: i % 3, weight: (i % 5) + 1, key: `sk-k${i}`, ...limits }));
const mw = lib.distributor({ channels, logger: { warn() {}, error() {} }, validate: false, ...(strategy === 'weighted' ? {} : { selection: { strategy } }) });
let sessions = 0;
const noop = () => undefined;

function once() {
  const body = { model: 'gpt-5', input: 'hi' };
  if (mode === 'hit') body.prompt_cache_key = 'session-0001';
  else if (mode === 'miss') body.prompt_cache_key = `session-${++sessions}`;
  const req = { method: 'POST', url: '/v1/responses', originalUrl: '/v1/responses', headers: { 'content-type': 'application/json' }, body, _body: true, readableEnded: true, query: {} };
  const res = new EventEmitter();
  res.locals = {};
  res.statusCode = 200;
  res.closed = false;
  res.writableFinished = false;
  res.headersSent = false;
  res.setHeader = noop;
  let nexted = false;
  mw(req, res, () => {
    nexted = true;
  });
  if (!nexted) throw new Error('next() was not called synchronously');
  // the response finished: finalize() writes pins and records the success
  res.writableFinished = true;
  res.closed = true;
  res.emit('close');
}

for (let i = 0; i < n; i++) once(); // warm-up (JIT)
const t0 = process.hrtime.bigint();
for (let i = 0; i < n; i++) once();
process.stdout.write(`${Number(process.hrtime.bigint() - t0) / n}\n`);
void mw.shutdown();
