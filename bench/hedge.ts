// Hedging (`relay({ hedge: { afterMs } })`) against a long-tailed upstream: time to first byte at
// the client and the upstream requests it costs, without a hedge and with two afterMs values, in
// alternating rounds (A B C / C B A / ...) of one run.
//
//   npx tsx bench/hedge.ts
//
// env: N [600] client requests per configuration and round, CONCURRENCY [8], ROUNDS [3],
// FAST_MS [20] / SLOW_MS [1000] upstream time to first byte, SLOW_SHARE [0.1], HEDGES [100,200]
// (afterMs values; "off" is always measured), SEED [7], PIN [1] (the client and the upstream on
// CPU 0, the gateways on CPU 1 with taskset; PIN=0 leaves that to the kernel).
//
// Processes: this one runs the client (undici `request`, CONCURRENCY in flight) and the upstream
// (node:http, two ports = two channels of the same model, SSE answers). Each configuration is its
// own gateway child process (this file with BENCH_ROLE=gateway: express + distributor() +
// relay(), memory store, the two channels with equal weights), started once and warmed up.
//
// The long tail is per upstream request, seeded: the upstream draws "slow" from (round, request
// number, how many times it has seen that request: 1st = the primary, 2nd = the hedge), so every
// configuration of a round sees the same slow primaries, and a hedge has its own 10 % draw. TTFB
// is measured per request from sending it to the first body chunk (the SSE answer's first event;
// the relay sends the headers with it). Upstream requests are counted at the upstream, aborted
// hedge losers included.
import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import express from 'express';
import { Agent, request } from 'undici';
import { distributor, type ChannelInput, type Logger } from '../lib';
import { relay } from '../lib/entry/relay';
import { envNumber as num, median, pinCpus, stop, waitPort, type Server } from './lib';

const MODEL = 'gpt-4o-mini';

// ---- the gateway child (BENCH_ROLE=gateway) ----------------------------------------------------

async function gatewayMain(): Promise<void> {
  const port = Number(process.env.PORT);
  const hedgeMs = Number(process.env.HEDGE_MS ?? 0);
  const bases = String(process.env.UPSTREAMS).split(',');
  const channels: ChannelInput[] = bases.map((b, i) => ({ id: i + 1, name: `ch${i + 1}`, models: [MODEL], baseUrl: `${b}/v1`, key: `sk-up-${i + 1}`, weight: 1 }));
  const stats = { requests: 0, hedges: 0, hedgeWon: 0, warnings: 0 };
  const logger: Logger = {
    warn: () => void stats.warnings++,
    error: () => void stats.warnings++,
  };
  const mw = distributor({ channels, logger });
  const fwd = relay({ forwardHeaders: ['x-bench-req'], ...(hedgeMs > 0 ? { hedge: { afterMs: hedgeMs } } : {}) });
  const app = express();
  app.set('etag', false);
  app.get('/bench-stats', (_req, res) => void res.json(stats));
  app.use((_req, res, next) => {
    res.locals.token = {};
    next();
  });
  app.use('/v1', mw, (_req, res, next) => {
    res.once('close', () => {
      stats.requests++;
      const trace: string[] = res.locals.distribution?.trace ?? [];
      if (trace.some((t) => t.startsWith('hedge ch='))) stats.hedges++;
      if (trace.some((t) => t.startsWith('hedge_won'))) stats.hedgeWon++;
    });
    next();
  });
  app.post('/v1/chat/completions', fwd);
  const server = app.listen(port, '127.0.0.1');
  const shutdown = async () => {
    server.close();
    server.closeAllConnections();
    await fwd.close();
    await mw.shutdown();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown());
}

// ---- the driver ----------------------------------------------------------------------------------

/** One step of mulberry32 from state `seed`. */
function mulberry32Step(seed: number): number {
  let t = (seed + 0x6d2b79f5) >>> 0;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

/**
 * Is the k-th upstream request (0 = the primary, 1 = the hedge) of request `id` slow? The k-th
 * draw of a mulberry32 stream seeded from (seed, id): FNV-1a of the id, then murmur3's fmix32.
 */
function isSlow(seed: number, id: string, k: number, share: number): boolean {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return mulberry32Step((h >>> 0) + Math.imul(k, 0x6d2b79f5)) < share;
}

interface Upstream {
  servers: http.Server[];
  urls: string[];
  /** Upstream requests received, per channel. */
  hits: number[];
  /** Of those, the ones closed by the gateway before the answer (hedge losers). */
  aborted: number;
  /** Slow draws among the first request of each id (the primaries). */
  slowPrimaries: number;
  seen: Map<string, number>;
  reset(): void;
}

async function startUpstream(fastMs: number, slowMs: number, slowShare: number, seed: number): Promise<Upstream> {
  const up: Upstream = {
    servers: [],
    urls: [],
    hits: [0, 0],
    aborted: 0,
    slowPrimaries: 0,
    seen: new Map(),
    reset() {
      this.hits = this.hits.map(() => 0);
      this.aborted = 0;
      this.slowPrimaries = 0;
      this.seen.clear();
    },
  };
  for (let c = 0; c < 2; c++) {
    const server = http.createServer((req, res) => {
      up.hits[c]++;
      const id = String(req.headers['x-bench-req'] ?? 'none');
      const k = up.seen.get(id) ?? 0;
      up.seen.set(id, k + 1);
      // the id is "<round>:<n>" or "w<port>:<n>" (warm-up); the draw depends on it and on k only
      const slow = isSlow(seed, id, k, slowShare);
      if (slow && k === 0) up.slowPrimaries++;
      req.resume();
      const timer = setTimeout(() => {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        res.write(`data: {"id":"c1","object":"chat.completion.chunk","model":"${MODEL}","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"}}]}\n\n`);
        res.write(`data: {"id":"c1","object":"chat.completion.chunk","model":"${MODEL}","choices":[{"index":0,"delta":{"content":" there"},"finish_reason":"stop"}]}\n\n`);
        res.end('data: [DONE]\n\n');
      }, slow ? slowMs : fastMs);
      res.on('close', () => {
        if (!res.writableEnded) {
          clearTimeout(timer);
          up.aborted++;
        }
      });
    });
    server.keepAliveTimeout = 65_000;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    up.servers.push(server);
    up.urls.push(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  }
  return up;
}

interface RoundResult {
  ttfb: number[];
  failed: number;
  upstream: number;
  aborted: number;
  slowPrimaries: number;
  hedges: number;
  hedgeWon: number;
  seconds: number;
}

const client = new Agent({ keepAliveTimeout: 30_000 });
const body = JSON.stringify({ model: MODEL, stream: true, messages: [{ role: 'user', content: 'Say hello in five words.' }], max_tokens: 16 });

async function one(port: number, id: string): Promise<number | null> {
  const t0 = performance.now();
  const r = await request(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    dispatcher: client,
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client', 'x-bench-req': id },
    body,
  });
  let first = NaN;
  let text = '';
  for await (const chunk of r.body) {
    if (Number.isNaN(first)) first = performance.now() - t0;
    text += (chunk as Buffer).toString('utf8');
  }
  return r.statusCode === 200 && text.includes('[DONE]') ? first : null;
}

async function gatewayStats(port: number): Promise<{ hedges: number; hedgeWon: number; warnings: number }> {
  const r = await request(`http://127.0.0.1:${port}/bench-stats`, { dispatcher: client });
  return (await r.body.json()) as { hedges: number; hedgeWon: number; warnings: number };
}

async function runOne(port: number, up: Upstream, prefix: string, n: number, concurrency: number): Promise<RoundResult> {
  up.reset();
  const before = await gatewayStats(port);
  const ttfb: number[] = [];
  let failed = 0;
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, n) }, async () => {
      while (next < n) {
        const id = `${prefix}${next++}`;
        const t = await one(port, id).catch(() => null);
        if (t === null) failed++;
        else ttfb.push(t);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  // losers are aborted after the winner answered: let their close events reach the upstream
  await new Promise((r) => setTimeout(r, 50));
  const after = await gatewayStats(port);
  return {
    ttfb,
    failed,
    upstream: up.hits.reduce((a, b) => a + b, 0),
    aborted: up.aborted,
    slowPrimaries: up.slowPrimaries,
    hedges: after.hedges - before.hedges,
    hedgeWon: after.hedgeWon - before.hedgeWon,
    seconds,
  };
}

/** Nearest-rank percentile. */
function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)];
}

async function main(): Promise<void> {
  const N = Math.max(1, num('N', 600));
  const CONCURRENCY = Math.max(1, num('CONCURRENCY', 8));
  const ROUNDS = Math.max(1, num('ROUNDS', 3));
  const FAST_MS = num('FAST_MS', 20);
  const SLOW_MS = num('SLOW_MS', 1000);
  const SLOW_SHARE = num('SLOW_SHARE', 0.1);
  const SEED = num('SEED', 7);
  const hedgeValues = (process.env.HEDGES ?? '100,200').split(',').filter(Boolean).map(Number);

  const up = await startUpstream(FAST_MS, SLOW_MS, SLOW_SHARE, SEED);
  const configs = [{ label: 'no hedge', hedgeMs: 0 }, ...hedgeValues.map((h) => ({ label: `hedge afterMs ${h}`, hedgeMs: h }))];
  const servers: (Server & { hedgeMs: number })[] = [];
  let port = 18460;
  try {
    for (const c of configs) {
      const proc = spawn(process.execPath, ['--import', 'tsx', __filename], {
        cwd: path.join(__dirname, '..'),
        env: { ...process.env, BENCH_ROLE: 'gateway', PORT: String(port), HEDGE_MS: String(c.hedgeMs), UPSTREAMS: up.urls.join(',') },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      servers.push({ name: c.label, proc, port, hedgeMs: c.hedgeMs });
      await waitPort(port++);
    }
    const pinned = pinCpus(servers);
    for (const s of servers) await runOne(s.port, up, `w${s.port}:`, 200, CONCURRENCY); // warm-up
    const results = new Map<string, RoundResult[]>(configs.map((c) => [c.label, []]));
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? servers : [...servers].reverse();
      for (const s of order) {
        const res = await runOne(s.port, up, `${r}:`, N, CONCURRENCY);
        results.get(s.name)!.push(res);
        process.stderr.write(
          `round ${r + 1} ${s.name}: p50 ${pct(res.ttfb, 50).toFixed(1)} p95 ${pct(res.ttfb, 95).toFixed(1)} p99 ${pct(res.ttfb, 99).toFixed(1)} ms, ` +
            `${res.upstream} upstream (${res.aborted} aborted), slow primaries ${res.slowPrimaries}, hedges ${res.hedges} (won ${res.hedgeWon}), ${res.failed} failed, ${res.seconds.toFixed(1)} s\n`,
        );
      }
    }
    const warnings = await Promise.all(servers.map((s) => gatewayStats(s.port).then((x) => x.warnings)));

    console.log(
      `\n${N} requests per configuration and round, ${CONCURRENCY} in flight, ${ROUNDS} alternating rounds; upstream: 2 channels (same model, equal weights), ` +
        `SSE, time to first byte ${FAST_MS} ms, ${SLOW_MS} ms for ${(SLOW_SHARE * 100).toFixed(0)} % of upstream requests (seeded, seed ${SEED})` +
        `${pinned ? '; client and upstream on CPU 0, gateways on CPU 1' : ''}. TTFB: median over the rounds of each round's percentile; requests summed over the rounds.\n`,
    );
    console.log('| config | TTFB p50 ms | p95 ms | p99 ms | max ms | client requests | upstream requests | extra upstream requests | hedges fired (won) | failed |');
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const c of configs) {
      const rs = results.get(c.label)!;
      const sum = (f: (x: RoundResult) => number) => rs.reduce((a, x) => a + f(x), 0);
      const clientReqs = sum((x) => x.ttfb.length + x.failed);
      const upstream = sum((x) => x.upstream);
      const m = (p: number) => median(rs.map((x) => pct(x.ttfb, p))).toFixed(1);
      console.log(
        `| ${c.label} | ${m(50)} | ${m(95)} | ${m(99)} | ${Math.max(...rs.map((x) => Math.max(...x.ttfb))).toFixed(0)} | ${clientReqs} | ${upstream} | ` +
          `${(100 * (upstream / clientReqs - 1)).toFixed(1)} % | ${sum((x) => x.hedges)} (${sum((x) => x.hedgeWon)}) | ${sum((x) => x.failed)} |`,
      );
    }
    const slow = results.get(configs[0].label)!.map((x) => x.slowPrimaries);
    const both = Array.from({ length: ROUNDS }, (_, r) => Array.from({ length: N }, (_, n) => `${r}:${n}`).filter((id) => isSlow(SEED, id, 0, SLOW_SHARE) && isSlow(SEED, id, 1, SLOW_SHARE)).length);
    console.log(`\nSlow primaries per round (the same in every configuration): ${slow.join(', ')} of ${N}; of them slow on the second draw too (a hedge would be slow as well): ${both.join(', ')}.${warnings.some((w) => w) ? ` Gateway warnings logged: ${warnings.join(', ')}.` : ''}`);
  } finally {
    for (const s of servers) await stop(s);
    for (const s of up.servers) {
      s.closeAllConnections();
      s.close();
    }
    await client.close();
  }
}

if (process.env.BENCH_ROLE === 'gateway') void gatewayMain();
else
  void main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
