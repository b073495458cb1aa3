// The example gateway (auth stub + distributor() + relay(), memory store, one env channel) against
// the bare Express + undici proxy (the shared bench's floor "A"), both forwarding to the same fixed
// upstream, in alternating rounds so drift cancels. Target: ours >= 0.90 of the bare proxy.
//   npx tsx bench/relay-gateway.ts          env: DURATION [8] s, ROUNDS [4], CONNECTIONS [50]
import { spawn } from 'node:child_process';
import path from 'node:path';
import { load, median, stop, waitPort, type LoadResult, type Server } from './lib';

const DURATION = Number(process.env.DURATION ?? 8);
const ROUNDS = Number(process.env.ROUNDS ?? 4);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 50);
const root = path.join(__dirname, '..');
const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello in five words.' }], max_tokens: 16 });

async function spawnServer(name: string, args: string[], port: number, env: Record<string, string>): Promise<Server> {
  const proc = spawn(process.execPath, args, { cwd: root, env: { ...process.env, ...env, PORT: String(port) }, stdio: ['ignore', 'ignore', 'inherit'] });
  await waitPort(port);
  return { name, proc, port };
}

async function main(): Promise<void> {
  const upstream = await spawnServer('upstream', [path.join(__dirname, 'servers', 'fixed-upstream.cjs')], 18401, {});
  const servers = [
    await spawnServer('bare', [path.join(__dirname, 'servers', 'bare-proxy.cjs')], 18402, { UPSTREAM: 'http://127.0.0.1:18401' }),
    await spawnServer('ours', ['--import', 'tsx', path.join(root, 'examples', 'gateway', 'server.ts')], 18403, { CHANNELS: 'http://127.0.0.1:18401' }),
  ];
  const headers = { authorization: 'Bearer sk-client' };
  const results: Record<string, LoadResult[]> = { bare: [], ours: [] };
  const ratios: number[] = [];
  try {
    for (const s of servers) await load(s, { path: '/v1/chat/completions', body, headers, duration: 3, connections: CONNECTIONS });
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? servers : [...servers].reverse();
      const round: Record<string, number> = {};
      for (const s of order) {
        const res = await load(s, { path: '/v1/chat/completions', body, headers, duration: DURATION, connections: CONNECTIONS });
        if (res.errors || res.non2xx) throw new Error(`${s.name}: ${res.errors} errors, ${res.non2xx} non-2xx`);
        results[s.name].push(res);
        round[s.name] = res.rps;
        process.stderr.write(`round ${r + 1} ${s.name}: ${res.rps.toFixed(0)} req/s, ${res.cpuUsPerReq.toFixed(0)} us CPU/req\n`);
      }
      ratios.push(round.ours / round.bare);
    }
  } finally {
    for (const s of [...servers, upstream]) await stop(s);
  }
  console.log(`\n${ROUNDS} rounds x ${DURATION}s, ${CONNECTIONS} connections (medians)\n`);
  console.log('| target | req/s | p50 ms | p99 ms | server CPU us/req |');
  console.log('|---|---:|---:|---:|---:|');
  for (const [name, rs] of Object.entries(results)) {
    console.log(`| ${name} | ${median(rs.map((x) => x.rps)).toFixed(0)} | ${median(rs.map((x) => x.p50))} | ${median(rs.map((x) => x.p99))} | ${median(rs.map((x) => x.cpuUsPerReq)).toFixed(0)} |`);
  }
  console.log(`\nours / bare (median of per-round ratios): ${median(ratios).toFixed(3)}`);
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
