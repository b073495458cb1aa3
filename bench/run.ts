// `npm run bench`: every benchmark of this repo, one after the other (each prints a markdown table).
//   1. micro: selection vs channel count, key derivation vs body size, registry rebuild, pins heap
//   2. middleware: express.json() + reply with/without distributor() (memory, RedisStore)
//   3. gateway: the example gateway (distributor + relay) vs a bare undici proxy
// The peer comparison with Portkey is `bash bench/peers.sh` (it installs Portkey under /tmp).
// Env: ONLY=micro,middleware,gateway; DURATION, ROUNDS, CONNECTIONS, REDIS_URL as in each script.
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const root = path.join(__dirname, '..');
const only = (process.env.ONLY ?? 'micro,middleware,gateway').split(',');
const steps: Array<[string, string[]]> = [
  ['build', ['-e', "require('child_process').execSync('npm run build', { stdio: 'inherit' })"]],
  ['micro', ['--expose-gc', '--import', 'tsx', path.join(__dirname, 'micro.ts')]],
  ['middleware', ['--import', 'tsx', path.join(__dirname, 'middleware.ts')]],
  ['gateway', ['--import', 'tsx', path.join(__dirname, 'relay-gateway.ts')]],
];
for (const [name, args] of steps) {
  if (name !== 'build' && !only.includes(name)) continue;
  console.log(`\n## ${name}\n`);
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`${name} failed (exit ${r.status})`);
    process.exit(r.status ?? 1);
  }
}
