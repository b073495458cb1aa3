// Which Node HTTP client should relay() use? A loopback POST of a small JSON body, answered
// with a fixed chat.completion JSON by an upstream in a child process, through:
//   undici.request (keep-alive Agent) | undici.stream | undici.fetch | global fetch | node:http (keepAlive)
// Reports req/s at a fixed concurrency and the client's CPU time per request (the figure that
// matters for the relay's hot path; less sensitive to the 2 cores being shared with the upstream).
//
//   npx tsx bench/relay-client.ts            # DURATION=4 CONCURRENCY=32 ROUNDS=3
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { Writable } from 'node:stream';
import { Agent, fetch as undiciFetch, request, stream } from 'undici';

const DURATION = Number(process.env.DURATION ?? 4) * 1000;
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 32);
const ROUNDS = Number(process.env.ROUNDS ?? 3);

const UPSTREAM_SRC = `
const http = require('node:http');
const OK = Buffer.from(JSON.stringify({ id: 'chatcmpl-mock', object: 'chat.completion', created: 1700000000, model: 'gpt-4o-mini',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from mock', refusal: null }, logprobs: null, finish_reason: 'stop' }],
  usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 }, system_fingerprint: 'fp_mock' }));
const s = http.createServer((req, res) => { req.resume(); req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json', 'content-length': OK.length }); res.end(OK); }); });
s.keepAliveTimeout = 65000;
s.listen(0, '127.0.0.1', () => process.send(s.address().port));
`;

const BODY = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello in five words.' }], max_tokens: 16 });
const HEADERS = { 'content-type': 'application/json', authorization: 'Bearer sk-bench' };

type Client = { name: string; call: () => Promise<void>; close?: () => Promise<void> };

function clients(url: string): Client[] {
  const agent = new Agent({ keepAliveTimeout: 30_000, keepAliveMaxTimeout: 600_000 });
  const streamAgent = new Agent({ keepAliveTimeout: 30_000, keepAliveMaxTimeout: 600_000 });
  const fetchAgent = new Agent({ keepAliveTimeout: 30_000, keepAliveMaxTimeout: 600_000 });
  const httpAgent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const u = new URL(url);
  return [
    {
      name: 'undici.request',
      call: async () => {
        const r = await request(url, { method: 'POST', headers: HEADERS, body: BODY, dispatcher: agent });
        for await (const _ of r.body) { /* drain */ }
        if (r.statusCode !== 200) throw new Error(`status ${r.statusCode}`);
      },
      close: () => agent.close(),
    },
    {
      name: 'undici.stream',
      call: async () => {
        await stream(url, { method: 'POST', headers: HEADERS, body: BODY, dispatcher: streamAgent }, ({ statusCode }) => {
          if (statusCode !== 200) throw new Error(`status ${statusCode}`);
          return new Writable({ write(_c, _e, cb) { cb(); } });
        });
      },
      close: () => streamAgent.close(),
    },
    {
      name: 'undici.fetch',
      call: async () => {
        const r = await undiciFetch(url, { method: 'POST', headers: HEADERS, body: BODY, dispatcher: fetchAgent });
        await r.arrayBuffer();
        if (r.status !== 200) throw new Error(`status ${r.status}`);
      },
      close: () => fetchAgent.close(),
    },
    {
      name: 'global fetch',
      call: async () => {
        const r = await fetch(url, { method: 'POST', headers: HEADERS, body: BODY });
        await r.arrayBuffer();
        if (r.status !== 200) throw new Error(`status ${r.status}`);
      },
    },
    {
      name: 'node:http',
      call: () => new Promise<void>((resolve, reject) => {
        const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', agent: httpAgent,
          headers: { ...HEADERS, 'content-length': Buffer.byteLength(BODY) } }, (res) => {
          res.on('data', () => {});
          res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end(BODY);
      }),
      close: async () => httpAgent.destroy(),
    },
  ];
}

async function run(c: Client, ms: number): Promise<{ rps: number; cpuUsPerReq: number; p50: number; p99: number }> {
  let n = 0;
  const lat: number[] = [];
  const end = Date.now() + ms;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (Date.now() < end) {
      const s = process.hrtime.bigint();
      await c.call();
      lat.push(Number(process.hrtime.bigint() - s) / 1e3);
      n++;
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  lat.sort((a, b) => a - b);
  return { rps: n / secs, cpuUsPerReq: (cpu.user + cpu.system) / n, p50: lat[Math.floor(lat.length * 0.5)], p99: lat[Math.floor(lat.length * 0.99)] };
}

async function main(): Promise<void> {
  const child: ChildProcess = spawn(process.execPath, ['-e', UPSTREAM_SRC], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve) => child.once('message', (m) => resolve(Number(m))));
  const url = `http://127.0.0.1:${port}/v1/chat/completions`;
  const list = clients(url);
  const results = new Map<string, Array<Awaited<ReturnType<typeof run>>>>();
  try {
    for (const c of list) await run(c, 1000); // warm-up
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? list : [...list].reverse();
      for (const c of order) {
        const out = await run(c, DURATION);
        if (!results.has(c.name)) results.set(c.name, []);
        results.get(c.name)!.push(out);
      }
    }
  } finally {
    for (const c of list) await c.close?.();
    child.kill('SIGTERM');
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const base = med(results.get('undici.request')!.map((x) => x.rps));
  console.log(`\nNode ${process.version}, undici ${require('undici/package.json').version}, concurrency ${CONCURRENCY}, ${ROUNDS} rounds x ${DURATION / 1000}s (medians)\n`);
  console.log('| client | req/s | vs undici.request | client CPU us/req | p50 us | p99 us |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const [name, rs] of results) {
    const rps = med(rs.map((x) => x.rps));
    console.log(`| ${name} | ${rps.toFixed(0)} | ${(rps / base).toFixed(2)} | ${med(rs.map((x) => x.cpuUsPerReq)).toFixed(0)} | ${med(rs.map((x) => x.p50)).toFixed(0)} | ${med(rs.map((x) => x.p99)).toFixed(0)} |`);
  }
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
