// In-process scaling micro-benchmarks (plain loops + process.hrtime): selection vs channel count,
// affinity key derivation + body extraction vs body size, registry rebuild, pins in memory.
// Run: npm run build && node --expose-gc --import tsx bench/micro.ts   (markdown tables; numbers per operation)
import { spawnSync } from 'node:child_process';
import type { Request, Response } from 'express';
import type { ChannelInput } from '../lib/types';

// The built package (dist/, plain tsc output) runs here, not the TypeScript sources through tsx:
// tsx wraps every function it creates in a naming helper, which distorts per-call closures.
/* eslint-disable @typescript-eslint/no-require-imports */
const { matchAffinity } = require('../dist/affinity/key') as typeof import('../lib/affinity/key');
const { compileRules, defaultAffinityRules } = require('../dist/affinity/rules') as typeof import('../lib/affinity/rules');
const { ChannelRegistry } = require('../dist/channels/registry') as typeof import('../lib/channels/registry');
const { selectChannel } = require('../dist/selection/select') as typeof import('../lib/selection/select');
const { MemoryStore } = require('../dist/stores/memory') as typeof import('../lib/stores/memory');
const { resolveOptions } = require('../dist/options') as typeof import('../lib/options');
const { nextChannel } = require('../dist/selection/next') as typeof import('../lib/selection/next');
const { createRuntime } = require('../dist/runtime') as typeof import('../lib/runtime');

/** Median ns per call over 7 rounds, after a warm-up round. */
function timeIt(_label: string, iterations: number, fn: () => void): number {
  for (let i = 0; i < iterations; i++) fn(); // warm-up (JIT)
  const rounds: number[] = [];
  for (let k = 0; k < 7; k++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) fn();
    rounds.push(Number(process.hrtime.bigint() - t0) / iterations);
  }
  rounds.sort((a, b) => a - b);
  return rounds[3];
}

function channels(n: number): ChannelInput[] {
  // three tiers; weights 1..10
  return Array.from({ length: n }, (_, i) => ({ id: i + 1, models: 'gpt-4o', priority: i % 3, weight: (i % 10) + 1, key: `k${i}` }));
}

const rows: string[] = [];
const out = (s: string) => rows.push(s);

async function pinsHeap(): Promise<string> {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const before = process.memoryUsage().heapUsed;
  const store = new MemoryStore();
  for (let i = 0; i < 100_000; i++) await store.setPin(`aff:codex%20cli%20trace:${i.toString(36).padStart(43, 'a')}`, String((i % 20) + 1), 3_600_000);
  gc?.();
  const mb = (process.memoryUsage().heapUsed - before) / 1024 / 1024;
  store.shutdown();
  return `| 100,000 pins (43-char hashed keys) | ${mb.toFixed(1)} MB heap${gc ? '' : ' (run with --expose-gc for a precise figure)'} |`;
}

const SIZES = [10, 1_000, 10_000, 100_000];
interface SelectionTimes { pick: number; pickEx: number; run: number; runRead: number }

/**
 * Times one selection size in this process. Each size runs in a fresh process (as a gateway has
 * one registry): in one process the benchmark's own call sites see every size's closures, turn
 * megamorphic and stop inlining, which made the largest size (measured last) look slower.
 */
function selectionTimes(n: number): SelectionTimes {
  const reg = new ChannelRegistry(channels(n));
  const tiers = reg.tiers('default', 'gpt-4o');
  const tried = [1, 2, 3];
  const all = () => true;
  const ex = (id: number) => !tried.includes(id);
  let sink = 0;
  // `!== undefined`, as the distributor does: the pick hands the channel on without reading it
  const pick = timeIt('pick', 300_000, () => void (sink += selectChannel(tiers, all, Math.random) !== undefined ? 1 : 0));
  const pickEx = timeIt('pickEx', 300_000, () => void (sink += selectChannel(tiers, ex, Math.random) !== undefined ? 1 : 0));
  const cfg = resolveOptions({ channels: channels(n), logger: { warn() {}, error() {} } });
  const rt = createRuntime(cfg, () => undefined);
  const groups = ['default'];
  const none: number[] = []; // a request's first pick: nothing tried yet
  const runPick = timeIt('nextChannel', 300_000, () => void (sink += nextChannel(rt, 'gpt-4o', none, groups).ch !== undefined ? 1 : 0));
  // what setup does next: read the chosen channel (on a 33,334-channel tier, one cache miss)
  const runRead = timeIt('nextChannel+read', 300_000, () => void (sink += nextChannel(rt, 'gpt-4o', none, groups).ch?.status ?? 0));
  rt.health.stop();
  if (sink === -1) console.log('unreachable');
  return { pick, pickEx, run: runPick, runRead };
}

function selectionInChild(n: number): SelectionTimes {
  const r = spawnSync(process.execPath, [...process.execArgv, __filename, '--selection', String(n)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`selection child (${n}) failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() as string) as SelectionTimes;
}

async function main(): Promise<void> {
out('### MemoryStore: heap for 100,000 pins');
out(await pinsHeap());
out('');

out('### Selection vs channels in the group (3 tiers; each size in its own process)');
out('| channels | one pick (ns) | with 3 tried ids excluded | per-request selection: nextChannel (ns) | nextChannel + first read of the chosen channel (ns) |');
out('|---:|---:|---:|---:|---:|');
const sel: Record<number, SelectionTimes> = {};
for (const n of SIZES) {
  sel[n] = selectionInChild(n);
  const t = sel[n];
  out(`| ${n.toLocaleString('en-US')} | ${t.pick.toFixed(0)} | ${t.pickEx.toFixed(0)} | ${t.run.toFixed(0)} | ${t.runRead.toFixed(0)} |`);
}
const b = sel[SIZES[0]];
const last = sel[SIZES[SIZES.length - 1]];
out(`| ratio 100,000 / 10 | **${(last.pick / b.pick).toFixed(2)}** | ${(last.pickEx / b.pickEx).toFixed(2)} | **${(last.run / b.run).toFixed(2)}** | ${(last.runRead / b.runRead).toFixed(2)} |`);
out('');

out('### Registry rebuild (validate + index) for 10,000 channels');
{
  const input = channels(10_000);
  const t0 = process.hrtime.bigint();
  const reg = new ChannelRegistry(input);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const t1 = process.hrtime.bigint();
  reg.setStatus(5, 2);
  const ms2 = Number(process.hrtime.bigint() - t1) / 1e6;
  out(`| construct (10,000) | ${ms.toFixed(1)} ms |`);
  out(`| setStatus -> index rebuild (10,000) | ${ms2.toFixed(1)} ms |`);
}

out('');
out('### Affinity key derivation + body field extraction (codex rule, body already parsed once)');
out('| body size | JSON.parse (once, by the distributor or express.json) | key derivation, a known session (cached key) | key derivation, a new session each time (SHA-256) |');
out('|---:|---:|---:|---:|');
const rules = compileRules(defaultAffinityRules(), 3600);
for (const size of [1_000, 100_000, 1_000_000, 10_000_000]) {
  const pad = 'x'.repeat(Math.max(0, size - 200));
  const text = JSON.stringify({ model: 'gpt-5', prompt_cache_key: 'session-0123456789', input: [{ role: 'user', content: pad }] });
  const iters = size >= 1_000_000 ? 20 : 2000;
  const parseNs = timeIt('parse', iters, () => void JSON.parse(text));
  const body = JSON.parse(text) as Record<string, unknown>;
  const req = { headers: {}, query: {} } as unknown as Request;
  const res = { locals: {} } as unknown as Response;
  const keyNs = timeIt('key', 50_000, () => void matchAffinity(rules, { req, res, model: 'gpt-5', path: '/v1/responses', group: 'default', ctx: { tokenId: 7 }, body }));
  // a distinct value per call: always a miss in the recent-keys cache
  const fresh = Array.from({ length: 1024 }, (_, i) => ({ ...body, prompt_cache_key: `session-${size}-${i}` }));
  let k = 0;
  const newNs = timeIt('key-new', 50_000, () => {
    const b = fresh[k++ & 1023];
    b.prompt_cache_key = `s${k}`;
    void matchAffinity(rules, { req, res, model: 'gpt-5', path: '/v1/responses', group: 'default', ctx: { tokenId: 7 }, body: b });
  });
  out(`| ${(size / 1000).toLocaleString('en-US')} KB | ${(parseNs / 1000).toFixed(1)} µs | ${(keyNs / 1000).toFixed(2)} µs | ${(newNs / 1000).toFixed(2)} µs |`);
}
console.log(rows.join('\n'));
}

if (process.argv[2] === '--selection') console.log(JSON.stringify(selectionTimes(Number(process.argv[3]))));
else void main();
