// Store operations at capacity: fills a MemoryStore with maxPins (100,000) pins and reports the
// longest event-loop block (ms) of the expiry sweep, countPins, clearPins of one rule and
// clearPins of all, plus heap and what a write does when the store is full; the same for the
// 0.1.0 MemoryStore (node-cache), loaded from git (`git show $OLD_REV:lib/stores/memory.ts`), in
// the same run.
//
// Run: npx tsx bench/store-block.ts        (node --expose-gc --import tsx bench/store-block.ts for heap)
// Knobs: PINS (default 100000), ROUNDS (default 3), OLD_REV (default 4f0d7fe, the 0.1.0 tree).
//
// A block is the longest gap between two turns of a setImmediate loop while the operation runs
// (the longest synchronous run, GC pauses included). Each figure is the median of ROUNDS rounds
// (max in brackets), stores alternating new / old / old / new so drift of the machine cancels.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { PIN_NAMESPACE, pinKeyPrefix, ruleNameOfPinKey } from '../lib/affinity/layout';
import { MemoryStore } from '../lib/stores/memory';

const PINS = Number(process.env.PINS ?? 100_000);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const OLD_REV = process.env.OLD_REV ?? '4f0d7fe';
const ROOT = path.resolve(__dirname, '..');

/** What both stores offer (the 0.1.0 one has no maxPins property and no sweep()), in this build's terms. */
interface PinStore {
  setPin(key: string, value: string, ttlMs: number): Promise<void>;
  getPin(key: string): Promise<string | null>;
  countPins(groupOf: (key: string) => string): Promise<Record<string, number>>;
  clearPins(keyPrefix?: string): Promise<number>;
  readonly pinCount: number;
  shutdown(): void;
}
type Make = (options: { maxPins?: number; checkPeriodSeconds?: number }) => PinStore;

/** The 0.1.0 store's pin API: channel ids as numbers; clearPins by rule part, countPins by rule. */
interface OldPinStore {
  setPin(key: string, channelId: number, ttlMs: number): Promise<void>;
  getPin(key: string): Promise<number | null>;
  countPins(): Promise<Record<string, number>>;
  clearPins(rule?: string): Promise<number>;
  readonly pinCount: number;
  shutdown(): void;
}

/**
 * A 0.1.0 store seen through this build's API. Values are channel ids (what the distributor
 * writes); a key prefix is `aff:<rule part>:` (what the admin passes); the count groups by rule
 * itself (what `ruleNameOfPinKey` gives). Each call hands back the old store's own promise.
 */
function adaptOld(old: OldPinStore): PinStore {
  return {
    setPin: (key, value, ttlMs) => old.setPin(key, Number(value), ttlMs),
    getPin: (key) => old.getPin(key).then((id) => (id === null ? null : String(id))),
    countPins: () => old.countPins(),
    clearPins: (keyPrefix) => {
      if (!keyPrefix || keyPrefix === PIN_NAMESPACE) return old.clearPins();
      const m = /^aff:([^:]+):$/.exec(keyPrefix);
      if (!m) throw new Error(`the 0.1.0 store clears by rule only, not by ${JSON.stringify(keyPrefix)}`);
      return old.clearPins(m[1]);
    },
    get pinCount() {
      return old.pinCount;
    },
    shutdown: () => old.shutdown(),
  };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const gc = (globalThis as { gc?: () => void }).gc;
const key = (i: number, rule = 'codex%20cli%20trace') => `aff:${rule}:${i.toString(36).padStart(43, '0')}`;

/** The 0.1.0 MemoryStore, its imports pointed at this checkout (same node-cache, same key helpers). */
async function loadOld(): Promise<{ make: Make; dir: string } | { error: string }> {
  let source: string;
  try {
    source = execFileSync('git', ['show', `${OLD_REV}:lib/stores/memory.ts`], { cwd: ROOT, encoding: 'utf8' });
  } catch (e) {
    return { error: `git show ${OLD_REV}:lib/stores/memory.ts failed (${(e as Error).message.split('\n')[0]})` };
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'ecd-old-store-'));
  const rewritten = source
    // ruleNameOfPinKey, which 0.1.0 imported from affinity/key, lives in affinity/layout now
    .replace(/import \{ ruleNameOfPinKey \} from '\.\.\/affinity\/key'/g, `import { ruleNameOfPinKey } from ${JSON.stringify(path.join(ROOT, 'lib/affinity/layout'))}`)
    .replace(/from '\.\.\/affinity\/key'/g, `from ${JSON.stringify(path.join(ROOT, 'lib/affinity/key'))}`)
    .replace(/from '\.\.\/types'/g, `from ${JSON.stringify(path.join(ROOT, 'lib/types'))}`)
    .replace(/from '\.\/store'/g, `from ${JSON.stringify(path.join(ROOT, 'lib/stores/store'))}`)
    .replace(/from 'node-cache'/g, `from ${JSON.stringify(require.resolve('node-cache', { paths: [ROOT] }))}`);
  const file = path.join(dir, 'memory-0.1.0.ts');
  writeFileSync(file, rewritten);
  const mod = (await import(file)) as { MemoryStore: new (o: object) => OldPinStore };
  return { make: (o) => adaptOld(new mod.MemoryStore(o)), dir };
}

/** Longest gap between two turns of the event loop while `op` runs (ms). */
async function block(op: () => Promise<unknown>): Promise<number> {
  let last = performance.now();
  let worst = 0;
  let running = true;
  const turn = () => {
    const now = performance.now();
    worst = Math.max(worst, now - last);
    last = now;
    if (running) setImmediate(turn);
  };
  setImmediate(turn);
  await op();
  running = false;
  turn();
  return worst;
}

async function fill(s: PinStore, n: number, expiring = 0): Promise<void> {
  for (let i = 0; i < n; i++) await s.setPin(key(i, i % 2 ? 'claude%20cli%20trace' : 'codex%20cli%20trace'), String(1 + (i % 7)), i < expiring ? 300 : 3_600_000);
}

interface Round {
  fillMs: number;
  heapMb: number | null;
  sweep: number;
  count: number;
  clearRule: number;
  clearAll: number;
  /** What a new session's write does at maxPins. */
  whenFull: string;
}

async function round(make: Make): Promise<Round> {
  gc?.();
  const before = process.memoryUsage().heapUsed;
  // expiry sweep: half the pins expire after 300 ms; the sweep timer fires ~1 s after creation
  let s = make({ maxPins: PINS, checkPeriodSeconds: 1 });
  let t0 = performance.now();
  await fill(s, PINS, PINS / 2);
  const fillMs = performance.now() - t0;
  gc?.();
  const heapMb = gc ? (process.memoryUsage().heapUsed - before) / 2 ** 20 : null;
  const sweep = await block(() => sleep(1300));
  if (s.pinCount !== PINS / 2) throw new Error(`the sweep did not run (pinCount ${s.pinCount})`);
  s.shutdown();

  s = make({ maxPins: PINS, checkPeriodSeconds: 0 });
  await fill(s, PINS);
  await sleep(50);
  const count = await block(() => s.countPins(ruleNameOfPinKey));
  let whenFull: string;
  try {
    await s.setPin('aff:_:new-session', '9', 60_000);
    whenFull = (await s.getPin('aff:_:new-session')) === '9' ? `pinned (${(await s.getPin(key(0))) === null ? 'oldest evicted' : 'nothing evicted'})` : 'not pinned';
  } catch (e) {
    whenFull = `refused (${(e as Error).message.slice(0, 40)})`;
  }
  const clearRule = await block(() => s.clearPins(pinKeyPrefix({ name: 'claude cli trace', includeRuleName: true })));
  s.shutdown();

  s = make({ maxPins: PINS, checkPeriodSeconds: 0 });
  t0 = performance.now();
  await fill(s, PINS);
  await sleep(50);
  const clearAll = await block(() => s.clearPins());
  s.shutdown();
  return { fillMs, heapMb, sweep, count, clearRule, clearAll, whenFull };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (xs: number[]) => `${median(xs).toFixed(1)} (${Math.max(...xs).toFixed(1)})`;

async function main(): Promise<void> {
  const old = await loadOld();
  const makeNew: Make = (o) => new MemoryStore(o);
  const results: Record<'new' | 'old', Round[]> = { new: [], old: [] };
  for (let r = 0; r < ROUNDS; r++) {
    const order: Array<'new' | 'old'> = r % 2 ? ['old', 'new'] : ['new', 'old'];
    for (const which of order) {
      if (which === 'old' && 'error' in old) continue;
      results[which].push(await round(which === 'new' ? makeNew : (old as { make: Make }).make));
    }
  }
  if ('dir' in old) rmSync(old.dir, { recursive: true, force: true });

  const line = (label: string, rs: Round[]) => (rs.length === 0 ? `| ${label} | – | – | – | – | – | – | – |` : [
    `| ${label}`,
    fmt(rs.map((x) => x.sweep)),
    fmt(rs.map((x) => x.count)),
    fmt(rs.map((x) => x.clearRule)),
    fmt(rs.map((x) => x.clearAll)),
    rs[0].heapMb === null ? 'run with --expose-gc' : `${median(rs.map((x) => x.heapMb as number)).toFixed(1)} MB`,
    `${median(rs.map((x) => x.fillMs)).toFixed(0)} ms`,
    `${rs[0].whenFull} |`,
  ].join(' | '));
  console.log(`Store operations at ${PINS.toLocaleString('en-US')} pins: longest event-loop block, ms, median of ${ROUNDS} rounds (max)`);
  console.log('');
  console.log('| store | expiry sweep | countPins | clearPins(rule) | clearPins() | heap | fill | a new session when full |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---|');
  console.log(line('this build (Map in write order, 3 ms slices)', results.new));
  console.log(line(`0.1.0 (node-cache, \`${OLD_REV}\`)`, results.old));
  if ('error' in old) console.log(`\n0.1.0 not measured: ${old.error}`);
}

void main();
