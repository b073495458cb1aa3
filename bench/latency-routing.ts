// Latency routing: three channels of one model, one of them 5x slower, with
// `selection.strategy: 'weighted'` (equal weights) versus `'lowest-latency'` (relay() reports each
// answer's latency), in alternating rounds (A B / B A / ...) of one run.
//
//   npx tsx bench/latency-routing.ts
//
// env: DURATION [6] s per round, ROUNDS [4], CONNECTIONS [16], FAST_MS [20] / SLOW_MS [100]
// (constant upstream answer time: two fast channels, one slow), STRATEGIES
// [weighted,lowest-latency] (any of weighted, least-busy, lowest-latency, least-usage), PIN [1]
// (autocannon and the upstreams on CPU 0, the gateways on CPU 1 with taskset; PIN=0: the kernel).
//
// Processes: this one runs autocannon (bench/lib.ts `load`, POST /v1/chat/completions, JSON, no
// stream) and the three upstreams (node:http; a non-streamed chat.completion after the delay).
// Each strategy is its own gateway child process (this file with BENCH_ROLE=gateway: express +
// distributor() + relay(), memory store, default latency options), started once and warmed up
// for 2 s, so the rounds measure the learned state. The share of answers from the slow channel is
// counted at the upstreams. The per-round lines on stderr also show, per channel, what relay()
// reported to the gateway since it started: count, mean, and the same exponentially weighted
// average (half-life 50 samples) that lowest-latency compares.
import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import express from 'express';
import { distributor, type ChannelInput, type Logger, type SelectionStrategy } from '../lib';
import { relay } from '../lib/entry/relay';
import { envNumber as num, load, median, pinCpus, stop, waitPort, type LoadResult, type Server } from './lib';

const MODEL = 'gpt-4o-mini';

// ---- the gateway child (BENCH_ROLE=gateway) ----------------------------------------------------

async function gatewayMain(): Promise<void> {
  const port = Number(process.env.PORT);
  const strategy = process.env.STRATEGY as SelectionStrategy;
  const bases = String(process.env.UPSTREAMS).split(',');
  const channels: ChannelInput[] = bases.map((b, i) => ({ id: i + 1, name: `ch${i + 1}`, models: [MODEL], baseUrl: `${b}/v1`, key: `sk-up-${i + 1}`, weight: 1 }));
  let warnings = 0;
  const logger: Logger = {
    warn: () => void warnings++,
    error: () => void warnings++,
  };
  const mw = distributor({ channels, logger, selection: { strategy } });
  const fwd = relay({});
  const app = express();
  app.set('etag', false);
  // what relay() reports per channel: count, mean, and the same EWMA the library keeps (half-life 50)
  const reported = new Map<number, { n: number; sum: number; ewma: number; max: number; first: number }>();
  const alpha = 1 - Math.pow(0.5, 1 / 50);
  app.get('/bench-stats', (_req, res) => void res.json({ warnings, reported: Object.fromEntries(reported) }));
  app.use((_req, res, next) => {
    res.locals.token = {};
    next();
  });
  app.use('/v1', mw, (_req, res, next) => {
    const d = res.locals.distribution;
    if (d && typeof d.reportLatency === 'function') {
      const orig = d.reportLatency.bind(d);
      d.reportLatency = (ms: number, o?: { firstByte?: boolean }) => {
        const id = res.locals.channel?.id as number;
        const r = reported.get(id) ?? { n: 0, sum: 0, ewma: ms, max: 0, first: ms };
        r.n++;
        r.sum += ms;
        r.ewma += alpha * (ms - r.ewma);
        r.max = Math.max(r.max, ms);
        reported.set(id, r);
        orig(ms, o);
      };
    }
    next();
  });
  app.post('/v1/chat/completions', fwd);
  const server = app.listen(port, '127.0.0.1');
  process.on('SIGTERM', () => {
    server.close();
    server.closeAllConnections();
    void fwd.close().then(() => mw.shutdown()).then(() => process.exit(0));
  });
}

// ---- the driver ----------------------------------------------------------------------------------

const ANSWER = JSON.stringify({
  id: 'chatcmpl-bench', object: 'chat.completion', created: 1700000000, model: MODEL,
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from the bench upstream' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 9, completion_tokens: 6, total_tokens: 15 },
});

interface Upstreams {
  servers: http.Server[];
  urls: string[];
  hits: number[];
}

async function startUpstreams(delays: number[]): Promise<Upstreams> {
  const up: Upstreams = { servers: [], urls: [], hits: delays.map(() => 0) };
  for (const [c, delay] of delays.entries()) {
    const server = http.createServer((req, res) => {
      up.hits[c]++;
      req.resume();
      req.on('end', () => {
        const timer = setTimeout(() => {
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(ANSWER) });
          res.end(ANSWER);
        }, delay);
        res.on('close', () => clearTimeout(timer));
      });
    });
    server.keepAliveTimeout = 65_000;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    up.servers.push(server);
    up.urls.push(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  }
  return up;
}

async function main(): Promise<void> {
  const DURATION = Math.max(1, num('DURATION', 6));
  const ROUNDS = Math.max(1, num('ROUNDS', 4));
  const CONNECTIONS = Math.max(1, num('CONNECTIONS', 16));
  const FAST_MS = num('FAST_MS', 20);
  const SLOW_MS = num('SLOW_MS', 100);
  const strategies = (process.env.STRATEGIES ?? 'weighted,lowest-latency').split(',').filter(Boolean);
  const delays = [FAST_MS, FAST_MS, SLOW_MS];
  const slowIndex = 2;

  const up = await startUpstreams(delays);
  const servers: Server[] = [];
  let port = 18470;
  const body = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Say hello in five words.' }], max_tokens: 16 });
  const headers = { authorization: 'Bearer sk-client' };
  try {
    for (const strategy of strategies) {
      const proc = spawn(process.execPath, ['--import', 'tsx', __filename], {
        cwd: path.join(__dirname, '..'),
        env: { ...process.env, BENCH_ROLE: 'gateway', PORT: String(port), STRATEGY: strategy, UPSTREAMS: up.urls.join(',') },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      servers.push({ name: strategy, proc, port });
      await waitPort(port++);
    }
    const pinned = pinCpus(servers);
    for (const s of servers) await load(s, { path: '/v1/chat/completions', body, headers, duration: 2, connections: CONNECTIONS }); // warm-up
    const results = new Map<string, { res: LoadResult; slowShare: number; shares: number[] }[]>(strategies.map((s) => [s, []]));
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? servers : [...servers].reverse();
      for (const s of order) {
        up.hits = up.hits.map(() => 0);
        const res = await load(s, { path: '/v1/chat/completions', body, headers, duration: DURATION, connections: CONNECTIONS });
        if (res.errors || res.non2xx) throw new Error(`${s.name}: ${res.errors} errors, ${res.non2xx} non-2xx`);
        const total = up.hits.reduce((a, b) => a + b, 0) || 1;
        const slowShare = up.hits[slowIndex] / total;
        results.get(s.name)!.push({ res, slowShare, shares: up.hits.map((h) => h / total) });
        const st = (await (await fetch(`http://127.0.0.1:${s.port}/bench-stats`)).json()) as { reported: Record<string, { n: number; sum: number; ewma: number; max: number; first: number }> };
        const lat = Object.entries(st.reported).map(([id, x]) => `ch${id} n=${x.n} mean=${(x.sum / x.n).toFixed(1)} ewma=${x.ewma.toFixed(1)} max=${x.max.toFixed(0)} first=${x.first.toFixed(0)}`).join('; ');
        process.stderr.write(
          `round ${r + 1} ${s.name}: [${lat}] ${res.rps.toFixed(0)} req/s, p50 ${res.p50} p99 ${res.p99} ms, upstream hits ${up.hits.join('/')} (slow ${(100 * slowShare).toFixed(1)} %), ${res.cpuUsPerReq.toFixed(0)} us CPU/req\n`,
        );
      }
    }
    console.log(
      `\n${ROUNDS} alternating rounds x ${DURATION} s, ${CONNECTIONS} connections (autocannon, pipelining 1)${pinned ? ', autocannon and upstreams on CPU 0, gateways on CPU 1' : ''}; ` +
        `3 channels, equal weights, answers after ${delays.join(' / ')} ms (JSON); medians over the rounds.\n`,
    );
    console.log('| strategy | req/s | p50 ms | p99 ms | answers from the slow channel | answers per channel (fast / fast / slow) |');
    console.log('|---|---:|---:|---:|---:|---|');
    const warnings = await Promise.all(servers.map(async (s) => ((await (await fetch(`http://127.0.0.1:${s.port}/bench-stats`)).json()) as { warnings: number }).warnings));
    for (const s of strategies) {
      const rs = results.get(s)!;
      console.log(
        `| ${s} | ${median(rs.map((x) => x.res.rps)).toFixed(0)} | ${median(rs.map((x) => x.res.p50))} | ${median(rs.map((x) => x.res.p99))} | ` +
          `${(100 * median(rs.map((x) => x.slowShare))).toFixed(1)} % | ${delays.map((_, i) => `${(100 * median(rs.map((x) => x.shares[i]))).toFixed(1)} %`).join(' / ')} |`,
      );
    }
    if (warnings.some((w) => w)) console.log(`\nGateway warnings logged: ${warnings.join(', ')}.`);
  } finally {
    for (const s of servers) await stop(s);
    for (const s of up.servers) {
      s.closeAllConnections();
      s.close();
    }
  }
}

if (process.env.BENCH_ROLE === 'gateway') void gatewayMain();
else
  void main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
