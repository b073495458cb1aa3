// Issue 13: does affinity keep a session on one prompt cache? The cached-token ratio of a
// coding-agent workload against the example gateway's mock upstreams (which keep a prompt cache per
// API key and session), with `affinity: { keyLevel, coalesce }` on (the defaults) versus 0.1
// behaviour (both off), in one run.
//
//   npx tsx bench/affinity-cache.ts
//
// env: SESSIONS [200], BURST [4] concurrent first requests per session, FOLLOWUPS [8] sequential
// requests after the burst, INFLIGHT [20] sessions at a time, CHANNELS [3], KEYS [3] per channel,
// DELAY_MS [20] mock answer delay (so a burst overlaps as it does against a real provider),
// ROUNDS [3] (configurations alternate A, B, A, B, ...; fresh mocks and distributor each round;
// tokens are summed over the rounds, req/s is the median), SEED [13].
//
// Everything runs in this process over real loopback HTTP: an undici client -> Express app
// (context -> distributor() -> relay(), as __tests__/helpers/relay-kit.ts `gateway()` builds it)
// -> mock upstreams (examples/gateway/mock-upstream.ts). Tokens come from the distributor's `usage`
// hook (the relay reads them from each SSE answer) and hits/misses from `affinityReport()`.
import express from 'express';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { Agent, request } from 'undici';
import { distributor, type AffinityOptions, type ChannelInput, type DistributorHandler, type Logger, type RequestContext } from '../lib';
import { relay } from '../lib/entry/relay';
import { distributorAdmin, type AffinityRuleReport } from '../lib/entry/admin';
import { startMockUpstream, type MockUpstream } from '../examples/gateway/mock-upstream';

const num = (name: string, dflt: number) => {
  const v = process.env[name];
  const n = v === undefined || v === '' ? dflt : Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number >= 0`);
  return n;
};
const SESSIONS = num('SESSIONS', 200);
const BURST = Math.max(1, num('BURST', 4));
const FOLLOWUPS = num('FOLLOWUPS', 8);
const INFLIGHT = Math.max(1, num('INFLIGHT', 20));
const CHANNELS = Math.max(1, num('CHANNELS', 3));
const KEYS = Math.max(1, num('KEYS', 3));
const DELAY_MS = num('DELAY_MS', 20);
const ROUNDS = Math.max(1, num('ROUNDS', 3));
const SEED = num('SEED', 13);

const MODEL = 'gpt-5-codex';
const RULE = 'codex cli trace';

interface Config {
  label: string;
  affinity: AffinityOptions;
}
const CONFIGS: Config[] = [
  { label: 'A: keyLevel + coalesce (defaults)', affinity: { keyLevel: true, coalesce: true } },
  { label: 'B: both off (0.1 behaviour)', affinity: { keyLevel: false, coalesce: false } },
];

/** A small seeded PRNG (mulberry32), so A and B see the same random stream. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- the workload: Codex-like /v1/responses bodies whose history grows turn by turn -----------

const INSTRUCTIONS = `You are a coding agent running in a terminal. ${'Follow the repository conventions, run the tests, keep changes small. '.repeat(90)}`;
const filler = (tag: string, bytes: number) => `${tag}: ${'lorem ipsum dolor sit amet '.repeat(Math.ceil(bytes / 27))}`.slice(0, bytes);

function body(session: string, history: unknown[], tail: string): string {
  return JSON.stringify({
    model: MODEL,
    instructions: INSTRUCTIONS,
    input: [...history, { type: 'message', role: 'user', content: [{ type: 'input_text', text: tail }] }],
    tools: [],
    tool_choice: 'auto',
    parallel_tool_calls: false,
    store: false,
    stream: true,
    prompt_cache_key: session,
  });
}

const client = new Agent({ keepAliveTimeout: 10_000, connections: INFLIGHT * BURST * 2 });

interface Counters {
  requests: number;
  failed: number;
}

async function send(url: string, session: string, payload: string, c: Counters): Promise<void> {
  const r = await request(`${url}/v1/responses`, {
    method: 'POST',
    dispatcher: client,
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-bench-client', 'x-bench-session': session },
    body: payload,
  });
  let text = '';
  for await (const chunk of r.body) text += (chunk as Buffer).toString('utf8');
  c.requests++;
  if (r.statusCode !== 200 || !text.includes('response.completed')) c.failed++;
}

async function runSession(url: string, session: string, c: Counters): Promise<void> {
  const history: unknown[] = [{ type: 'message', role: 'user', content: [{ type: 'input_text', text: filler(`${session} environment_context`, 1500) }] }];
  // the opening burst: the same prefix, sent at once (a real agent's first turn plus side requests)
  await Promise.all(Array.from({ length: BURST }, (_, i) => send(url, session, body(session, history, `task ${session} part ${i}`), c)));
  for (let t = 0; t < FOLLOWUPS; t++) {
    history.push({ type: 'function_call_output', call_id: `call_${t}`, output: filler(`${session} tool output ${t}`, 2000) });
    await send(url, session, body(session, history, `continue ${t}`), c);
  }
}

// ---- one configuration, one round ----------------------------------------------------------

interface Result {
  requests: number;
  failed: number;
  seconds: number;
  input: number;
  cached: number;
  /** What the mock would have cached with every session on one key from its first answer on. */
  ceiling: number;
  report: AffinityRuleReport | undefined;
  sessions: number;
  splitChannel: number;
  splitKey: number;
  warnings: number;
}

const quietLogger = (warnings: { n: number }): Logger => ({
  error: () => {
    warnings.n++;
  },
  warn: () => {
    warnings.n++;
  },
});

async function runConfig(cfg: Config, round: number): Promise<Result> {
  const mocks: MockUpstream[] = [];
  for (let i = 0; i < CHANNELS; i++) mocks.push(await startMockUpstream({ name: `ch${i + 1}`, delayMs: DELAY_MS }));
  const channels: ChannelInput[] = mocks.map((m, i) => ({
    id: i + 1,
    name: `ch${i + 1}`,
    models: [MODEL],
    baseUrl: `${m.url}/v1`,
    key: Array.from({ length: KEYS }, (_, k) => `sk-upstream-${i + 1}-key-${k}`),
    multiKeyMode: 'random',
    weight: 1,
  }));

  // per session: the (channel, key) pairs that served, and its usage reports in arrival order
  const served = new Map<string, { pairs: Set<string>; channels: Set<number>; inputs: number[] }>();
  let input = 0;
  let cached = 0;
  const warnings = { n: 0 };

  const app = express();
  app.set('etag', false);
  app.use((req, res, next) => {
    const s = req.headers['x-bench-session'];
    // one tokenId per group of 10 sessions
    res.locals.token = { tokenId: `tok-${Math.floor(Number(String(s).split('-').pop()) / 10)}` } satisfies RequestContext;
    next();
  });
  const mw: DistributorHandler = distributor({
    channels,
    affinity: cfg.affinity,
    random: prng(SEED + round),
    logger: quietLogger(warnings),
    on: {
      usage: (e) => {
        const s = String(e.req.headers['x-bench-session']);
        let rec = served.get(s);
        if (!rec) served.set(s, (rec = { pairs: new Set(), channels: new Set(), inputs: [] }));
        rec.pairs.add(`${e.channelId}.${e.keyIndex ?? 0}`);
        rec.channels.add(e.channelId);
        rec.inputs.push(e.usage.inputTokens ?? 0);
        input += e.usage.inputTokens ?? 0;
        cached += e.usage.cachedTokens ?? 0;
      },
    },
  });
  const fwd = relay({});
  app.use('/v1', mw);
  app.all(/^\/v1\//, fwd);
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const c: Counters = { requests: 0, failed: 0 };
  const ids = Array.from({ length: SESSIONS }, (_, i) => `r${round}-${cfg.label[0]}-${i}`);
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: Math.min(INFLIGHT, SESSIONS) }, async () => {
      while (next < ids.length) await runSession(url, ids[next++], c);
    }),
  );
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;

  const report = distributorAdmin(mw).affinityReport()[RULE];
  let ceiling = 0;
  let splitChannel = 0;
  let splitKey = 0;
  for (const rec of served.values()) {
    rec.inputs.forEach((n, i) => {
      if (i > 0) ceiling += Math.floor(0.9 * n);
    });
    if (rec.channels.size > 1) splitChannel++;
    if (rec.pairs.size > 1) splitKey++;
  }

  await new Promise<void>((r) => {
    server.close(() => r());
    server.closeAllConnections();
  });
  await fwd.close();
  await mw.shutdown();
  for (const m of mocks) await m.close();
  return { requests: c.requests, failed: c.failed, seconds, input, cached, ceiling, report, sessions: served.size, splitChannel, splitKey, warnings: warnings.n };
}

// ---- the table ---------------------------------------------------------------------------------

const pct = (a: number, b: number) => (b > 0 ? `${((100 * a) / b).toFixed(1)} %` : '–');
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function main(): Promise<void> {
  const results = new Map<string, Result[]>(CONFIGS.map((c) => [c.label, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const cfg of CONFIGS) {
      const res = await runConfig(cfg, r);
      results.get(cfg.label)!.push(res);
      process.stderr.write(
        `round ${r + 1} ${cfg.label}: ${res.requests} requests (${res.failed} failed) in ${res.seconds.toFixed(2)} s, cached/input ${pct(res.cached, res.input)}, ` +
          `hits ${res.report?.hits ?? 0}/${res.report?.lookups ?? 0}, split sessions ${res.splitKey}/${res.sessions}${res.warnings ? `, ${res.warnings} warnings logged` : ''}\n`,
      );
    }
  }
  await client.close();

  const perRound = SESSIONS * (BURST + FOLLOWUPS);
  console.log(
    `\n${SESSIONS} sessions x (${BURST} concurrent first requests + ${FOLLOWUPS} sequential follow-ups) = ${perRound} requests per round, ` +
      `${INFLIGHT} sessions in flight, ${CHANNELS} channels x ${KEYS} keys (equal weights, random key), mock delay ${DELAY_MS} ms, ${ROUNDS} round(s) per configuration; tokens summed over the rounds\n`,
  );
  console.log('| config | requests | cached/input overall | on hits | on misses | sessions split over >1 channel | over >1 (channel, key) | hit rate | req/s (median) |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const cfg of CONFIGS) {
    const rs = results.get(cfg.label)!;
    const sum = (f: (r: Result) => number) => rs.reduce((a, r) => a + f(r), 0);
    const requests = sum((r) => r.requests);
    const failed = sum((r) => r.failed);
    const sessions = sum((r) => r.sessions);
    const hitIn = sum((r) => r.report?.onHits.inputTokens ?? 0);
    const hitCached = sum((r) => r.report?.onHits.cachedTokens ?? 0);
    const missIn = sum((r) => r.report?.onMisses.inputTokens ?? 0);
    const missCached = sum((r) => r.report?.onMisses.cachedTokens ?? 0);
    const hits = sum((r) => r.report?.hits ?? 0);
    const lookups = sum((r) => r.report?.lookups ?? 0);
    console.log(
      `| ${cfg.label} | ${requests.toLocaleString('en-US')}${failed ? ` (${failed} failed)` : ''} | ${pct(sum((r) => r.cached), sum((r) => r.input))} | ` +
        `${pct(hitCached, hitIn)} | ${pct(missCached, missIn)} | ${sum((r) => r.splitChannel)} / ${sessions} | ${sum((r) => r.splitKey)} / ${sessions} | ` +
        `${pct(hits, lookups)} | ${median(rs.map((r) => r.requests / r.seconds)).toFixed(0)} |`,
    );
  }
  const all = [...results.values()][0];
  console.log(
    `\nCeiling (every session on one key from its first answer; the mock caches 90 % of a repeated session's prompt): ` +
      `${pct(
        all.reduce((a, r) => a + r.ceiling, 0),
        all.reduce((a, r) => a + r.input, 0),
      )}`,
  );
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
