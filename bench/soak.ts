// Memory under sustained load: the middleware app (distributor + memory store) under 60 s of
// traffic from 200 sessions; heap after a full GC before and after, and the pin count.
//   npx tsx bench/soak.ts        env: DURATION [60] s, CONNECTIONS [50], SESSIONS [200]
import path from 'node:path';
import { spawn } from 'node:child_process';
import autocannon from 'autocannon';
import { stop, waitPort } from './lib';

const DURATION = Number(process.env.DURATION ?? 60);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 50);
const SESSIONS = Number(process.env.SESSIONS ?? 200);
const port = 18330;

async function heap(): Promise<{ heapUsed: number; rss: number; pins: number }> {
  const r = await fetch(`http://127.0.0.1:${port}/__heap`);
  return (await r.json()) as { heapUsed: number; rss: number; pins: number };
}

async function main(): Promise<void> {
  const proc = spawn(process.execPath, ['--expose-gc', path.join(__dirname, 'servers', 'middleware-app.cjs')], {
    env: { ...process.env, MODE: 'memory', PORT: String(port) }, stdio: ['ignore', 'ignore', 'inherit'],
  });
  const server = { name: 'memory', proc, port };
  await waitPort(port);
  const requests = Array.from({ length: SESSIONS }, (_, i) => ({
    method: 'POST' as const,
    path: '/v1/responses',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-5', prompt_cache_key: `soak-session-${i}`, input: 'Say hello.' }),
  }));
  const run = (duration: number) => autocannon({ url: `http://127.0.0.1:${port}`, connections: CONNECTIONS, duration, requests });
  try {
    await run(10); // warm-up: JIT, every session pinned
    const before = await heap();
    const r = await run(DURATION);
    const after = await heap();
    const mb = (n: number) => (n / 1024 / 1024).toFixed(1);
    console.log(`| load | requests | non-2xx | heap after GC before | heap after GC after | growth | pins before / after |`);
    console.log(`|---|---:|---:|---:|---:|---:|---:|`);
    console.log(`| ${DURATION} s, ${CONNECTIONS} connections, ${SESSIONS} sessions | ${r.requests.total} | ${r.non2xx} | ${mb(before.heapUsed)} MB | ${mb(after.heapUsed)} MB | ${mb(after.heapUsed - before.heapUsed)} MB | ${before.pins} / ${after.pins} |`);
  } finally {
    await stop(server);
  }
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
