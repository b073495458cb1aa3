// Starts a real redis-server on a free port for the suites that need one (connect-redis style).
// REDIS_URL wins when set. Under CI=true a missing redis-server fails the run instead of skipping.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const STATE_FILE = path.join(__dirname, '..', '..', '.tmp', 'redis-test.json');

import { freePort, waitForPort } from './ports';

export default async function globalSetup(): Promise<void> {
  mkdirSync(path.dirname(STATE_FILE), { recursive: true });
  if (process.env.REDIS_URL) {
    writeFileSync(STATE_FILE, JSON.stringify({ url: process.env.REDIS_URL }));
    return;
  }
  const has = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (has.error || has.status !== 0) {
    const msg = 'redis-server is not installed: the Redis store tests need it (apt-get install redis-server)';
    if (process.env.CI === 'true') throw new Error(msg);
    // eslint-disable-next-line no-console
    console.warn(`\n!!! ${msg}; they will be skipped locally.\n`);
    writeFileSync(STATE_FILE, JSON.stringify({ url: null }));
    return;
  }
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
    detached: false,
  });
  await waitForPort(port, 10_000);
  const url = `redis://127.0.0.1:${port}`;
  process.env.REDIS_URL = url;
  writeFileSync(STATE_FILE, JSON.stringify({ url, pid: child.pid }));
  (globalThis as { __REDIS_CHILD__?: unknown }).__REDIS_CHILD__ = child;
}
