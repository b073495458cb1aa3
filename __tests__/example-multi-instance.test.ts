// examples/multi-instance: two gateway processes on one Redis keep one session on one channel.
import { expect, test } from '@jest/globals';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { describeRedis } from './helpers/redis';

describeRedis('examples/multi-instance (one command)', (url) => {
  test('two processes, one session, one channel; exits by itself', async () => {
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--import', 'tsx', path.join(__dirname, '..', 'examples', 'multi-instance', 'run.ts')],
        { timeout: 40_000, env: { ...process.env, REDIS_URL: url } }, (err, stdout, stderr) => {
          if (err) reject(new Error(`${err.message}\n${stdout}\n${stderr}`));
          else resolve(stdout);
        });
    });
    const pids = [...out.matchAll(/gateway-\d: pid (\d+)/g)].map((m) => m[1]);
    expect(new Set(pids).size).toBe(2);
    expect(out).toMatch(/request 2 via gateway-2: channel \S+ \(pin used\)/);
    expect(out).toContain('OK: the session stayed on');
  }, 50_000);
});
