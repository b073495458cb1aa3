// In-process cost of one request through distributor() (no HTTP, no load generator): the handler
// is called directly with a minimal request/response pair and the response is then closed as
// finished, so lookup, selection, next() and the pin/health bookkeeping of finalize() all run.
// Builds are compared in the same run, each in its own process, in alternating rounds: a figure
// that does not depend on a noisy loopback (the HTTP benchmark's ratios move by 10 % between runs
// on this shared 2-core machine).
//
//   npm run build && npx tsx bench/inprocess.ts                 env: BUILDS=dist,/path/to/old/dist ROUNDS=7 N=200000
//   CONFIGS=weighted,least-busy,limits  compares configurations of one build instead (each a column:
//   a strategy name, or `limits` for weighted with rpm + maxConcurrency on every channel)
//
// Each measurement is bench/inprocess-child.cjs in its own process. Cases: `hit` (a known session, the default codex rule: pinned), `miss` (a new session every
// request: key derivation, selection, a pin write), `plain` (no affinity value).
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const configs = process.env.CONFIGS?.split(',');
// a column is a build, or (CONFIGS) a configuration of the first build
const builds = configs ?? (process.env.BUILDS ?? 'dist').split(',');
const dist = (process.env.BUILDS ?? 'dist').split(',')[0];
function spawnEnv(column: string): NodeJS.ProcessEnv {
  if (!configs) return process.env;
  return { ...process.env, STRATEGY: column === 'limits' ? 'weighted' : column, LIMITS: column === 'limits' ? '1' : '0' };
}
const rounds = Number(process.env.ROUNDS ?? 7);
const n = Number(process.env.N ?? 200_000);
const modes = ['hit', 'miss', 'plain'];
const childScript = path.join(__dirname, 'inprocess-child.cjs');
const results = new Map<string, number[]>();
for (let r = 0; r < rounds; r++) {
  const order = r % 2 === 0 ? builds : [...builds].reverse();
  for (const mode of modes) {
    for (const b of order) {
      const out = spawnSync(process.execPath, [childScript, configs ? dist : b, mode, String(n)], { encoding: 'utf8', env: spawnEnv(b) });
      if (out.status !== 0) throw new Error(`${b} ${mode}: ${out.stderr}`);
      const k = `${mode}|${b}`;
      results.set(k, [...(results.get(k) ?? []), Number(out.stdout.trim())]);
    }
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`\nIn-process ns per request (median of ${rounds} alternating rounds, ${n.toLocaleString('en-US')} requests each, 20 channels / 3 tiers)\n`);
console.log(`| case | ${builds.join(' | ')} |`);
console.log(`|---|${builds.map(() => '---:').join('|')}|`);
for (const mode of modes) console.log(`| ${mode} | ${builds.map((b) => Math.round(median(results.get(`${mode}|${b}`) ?? [NaN])).toLocaleString('en-US')).join(' | ')} |`);
