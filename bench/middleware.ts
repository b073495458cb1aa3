// Middleware overhead: the same Express app (express.json() + fixed reply) with and without
// distributor() in front (memory store, and RedisStore on a local redis-server), measured in
// alternating rounds (A B C / C B A / ...) so machine drift cancels; ratios are per round.
//   npx tsx bench/middleware.ts          env: DURATION [8] s, ROUNDS [6], CONNECTIONS [50], REDIS_URL
import path from 'node:path';
import { load, median, pinCpus, start, stop, type LoadResult } from './lib';

const DURATION = Number(process.env.DURATION ?? 8);
const ROUNDS = Number(process.env.ROUNDS ?? 6);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 50);
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const script = path.join(__dirname, 'servers', 'middleware-app.cjs');
const body = JSON.stringify({ model: 'gpt-5', prompt_cache_key: 'bench-session-1', input: 'Say hello in five words.' });

export async function runMiddlewareBench(): Promise<string> {
  const modes = (process.env.MODES ?? 'bare,memory,redis').split(',');
  const servers = [];
  let port = 18310;
  // A mode may name another build: `memory@/path/to/dist` (before/after comparisons).
  for (const m of modes) {
    const [mode, dist] = m.split('@');
    servers.push(await start(m, script, port++, { MODE: mode, REDIS_URL, ...(dist ? { DIST: dist } : {}) }));
  }
  const pinned = pinCpus(servers);
  const results: Record<string, LoadResult[]> = Object.fromEntries(modes.map((m) => [m, []]));
  try {
    for (const s of servers) await load(s, { path: '/v1/responses', body, duration: 2, connections: CONNECTIONS }); // warm-up
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? servers : [...servers].reverse();
      for (const s of order) {
        const res = await load(s, { path: '/v1/responses', body, duration: DURATION, connections: CONNECTIONS });
        if (res.errors || res.non2xx) throw new Error(`${s.name}: ${res.errors} errors, ${res.non2xx} non-2xx`);
        results[s.name].push(res);
        process.stderr.write(`round ${r + 1} ${s.name}: ${res.rps.toFixed(0)} req/s\n`);
      }
    }
  } finally {
    for (const s of servers) await stop(s);
  }
  const lines = [
    `Middleware overhead (${ROUNDS} alternating rounds x ${DURATION}s, ${CONNECTIONS} connections${pinned ? ', load generator on CPU 0 and servers on CPU 1' : ''}; POST /v1/responses with a prompt_cache_key, 20 channels / 3 tiers, default affinity rules)`,
    '',
    '| app | req/s (median) | ratio to bare (median of per-round ratios) | p50 ms | p99 ms | server CPU µs/req |',
    '|---|---:|---:|---:|---:|---:|',
  ];
  for (const m of modes) {
    const rs = results[m];
    const ratios = rs.map((x, i) => x.rps / results.bare[i].rps);
    lines.push(`| ${m === 'bare' ? 'express.json() + reply' : `+ distributor (${m.replace(/@.*\/([^/]+)\/dist$/, ' @ $1')})`} | ${median(rs.map((x) => x.rps)).toFixed(0)} | ${median(ratios).toFixed(3)} | ${median(rs.map((x) => x.p50))} | ${median(rs.map((x) => x.p99))} | ${median(rs.map((x) => x.cpuUsPerReq)).toFixed(0)} |`);
  }
  return lines.join('\n');
}

if (require.main === module) {
  runMiddlewareBench().then((t) => console.log(t), (e) => {
    console.error(e);
    process.exit(1);
  });
}
