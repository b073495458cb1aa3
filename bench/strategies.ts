// Cost of one pick per selection.strategy (API.md 11.4), with 10 and 1,000 channels in one tier:
// the same nextChannel() call selection makes for every request, on a runtime with warm signals
// (in-flight counts, latency averages, limit usage for every channel). In process, no HTTP.
//
//   npx tsx bench/strategies.ts        env: N=200000 ROUNDS=5
import { resolveOptions } from '../lib/options';
import { createRuntime } from '../lib/runtime';
import { nextChannel } from '../lib/selection/next';
import type { SelectionStrategy } from '../lib/types';

const n = Number(process.env.N ?? 200_000);
const rounds = Number(process.env.ROUNDS ?? 5);
const strategies: SelectionStrategy[] = ['weighted', 'least-busy', 'lowest-latency', 'least-usage'];

function runtimeFor(strategy: SelectionStrategy, size: number) {
  const channels = Array.from({ length: size }, (_, i) => ({
    id: i + 1, models: 'gpt-5', weight: (i % 5) + 1, key: `sk-${i}`, limits: { rpm: 1_000_000 },
  }));
  const cfg = resolveOptions({ channels, logger: { warn() {}, error() {} }, selection: { strategy } });
  const rt = createRuntime(cfg, () => undefined);
  for (let i = 1; i <= size; i++) {
    for (let k = 0; k < 5; k++) rt.latency.record(i, 'gpt-5', 100 + ((i * 37) % 400));
    for (let k = 0; k < i % 4; k++) rt.limits.enter(i);
  }
  return rt;
}

function measure(strategy: SelectionStrategy, size: number): number {
  const rt = runtimeFor(strategy, size);
  const groups = ['default'];
  const tried: number[] = [];
  let sink = 0;
  for (let i = 0; i < n; i++) sink += nextChannel(rt, 'gpt-5', tried, groups).ch?.id ?? 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) sink += nextChannel(rt, 'gpt-5', tried, groups).ch?.id ?? 0;
  const ns = Number(process.hrtime.bigint() - t0) / n;
  if (sink === -1) console.log(sink);
  return ns;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const out = new Map<string, number[]>();
for (let r = 0; r < rounds; r++) {
  for (const size of [10, 1000]) {
    for (const s of strategies) {
      const k = `${s}|${size}`;
      out.set(k, [...(out.get(k) ?? []), measure(s, size)]);
    }
  }
}
console.log(`\nns per pick (median of ${rounds} rounds, ${n.toLocaleString('en-US')} picks each; one tier)\n`);
console.log('| strategy | 10 channels | 1,000 channels |');
console.log('|---|---:|---:|');
for (const s of strategies) console.log(`| ${s} | ${Math.round(median(out.get(`${s}|10`) ?? [])).toLocaleString('en-US')} | ${Math.round(median(out.get(`${s}|1000`) ?? [])).toLocaleString('en-US')} |`);
