// In-process scaling micro-benchmarks (plain loops + process.hrtime): selection vs channel count,
// affinity key derivation + body extraction vs body size, registry rebuild, pins in memory.
// Run: npm run build && node --expose-gc --import tsx bench/micro.ts   (markdown tables; numbers per operation)
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
const { RequestRun } = require('../dist/retry/distribution') as typeof import('../lib/retry/distribution');
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
  for (let i = 0; i < 100_000; i++) await store.setPin(`aff:codex%20cli%20trace:${i.toString(36).padStart(43, 'a')}`, (i % 20) + 1, 3_600_000);
  gc?.();
  const mb = (process.memoryUsage().heapUsed - before) / 1024 / 1024;
  store.shutdown();
  return `| 100,000 pins (43-char hashed keys) | ${mb.toFixed(1)} MB heap${gc ? '' : ' (run with --expose-gc for a precise figure)'} |`;
}

async function main(): Promise<void> {
out('### MemoryStore: heap for 100,000 pins');
out(await pinsHeap());
out('');

out('### Selection: one pick (top tier, weighted) vs channels in the group');
out('| channels | ns per pick | ns per pick with 3 tried ids excluded | ratio to 10 |');
out('|---:|---:|---:|---:|');
let base = 0;
for (const n of [10, 1_000, 10_000, 100_000]) {
  const reg = new ChannelRegistry(channels(n));
  const tiers = reg.tiers('default', 'gpt-4o');
  const tried = new Set([1, 2, 3]);
  const all = () => true;
  const ex = (id: number) => !tried.has(id);
  const ns = timeIt('pick', 200_000, () => void selectChannel(tiers, all, Math.random));
  const nsEx = timeIt('pickEx', 200_000, () => void selectChannel(tiers, ex, Math.random));
  if (n === 10) base = ns;
  out(`| ${n.toLocaleString('en-US')} | ${ns.toFixed(0)} | ${nsEx.toFixed(0)} | ${(ns / base).toFixed(2)} |`);
}

out('');
out('### Selection as the distributor does it per request (RequestRun.pick: group lookup, tried and cooldown checks, weighted pick)');
out('| channels | ns per selection | ratio to 10 |');
out('|---:|---:|---:|');
let base2 = 0;
for (const n of [10, 1_000, 10_000, 100_000]) {
  const cfg = resolveOptions({ channels: channels(n), logger: { warn() {}, error() {} } });
  const rt = createRuntime(cfg);
  const req = { headers: {} } as unknown as Request;
  const res = { locals: {} } as unknown as Response;
  const run = new RequestRun(rt, req, res, {}, 'gpt-4o', 'default', ['default'], false);
  const groups = ['default'];
  const ns = timeIt('run.pick', 200_000, () => void run.pick(groups));
  if (n === 10) base2 = ns;
  out(`| ${n.toLocaleString('en-US')} | ${ns.toFixed(0)} | ${(ns / base2).toFixed(2)} |`);
}

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
out('| body size | JSON.parse (once, by the distributor or express.json) | key derivation | ');
out('|---:|---:|---:|');
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
  out(`| ${(size / 1000).toLocaleString('en-US')} KB | ${(parseNs / 1000).toFixed(1)} µs | ${(keyNs / 1000).toFixed(2)} µs |`);
}
console.log(rows.join('\n'));
}

void main();
