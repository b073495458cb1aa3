// Redis for the store suites: the URL of the server global-setup started (or REDIS_URL), a
// describe that skips loudly when there is none (and fails under CI=true), own redis-servers on
// free ports (for kill/restart and cluster tests), and prefix-scoped cleanup.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { freePort, waitForPort } from './ports';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe } from '@jest/globals';
import { STATE_FILE } from './global-setup';

/** The test Redis URL, or undefined when there is none (locally only; under CI=true this throws). */
export function redisUrl(): string | undefined {
  let url = process.env.REDIS_URL;
  if (!url && existsSync(STATE_FILE)) {
    try {
      url = (JSON.parse(readFileSync(STATE_FILE, 'utf8')) as { url?: string | null }).url ?? undefined;
    } catch {
      url = undefined;
    }
  }
  if (!url && process.env.CI === 'true') {
    throw new Error('No test Redis: REDIS_URL is unset and global-setup wrote no URL (CI=true requires Redis)');
  }
  return url || undefined;
}

/** `describe` when a test Redis exists; otherwise `describe.skip` with a loud warning. */
export function describeRedis(name: string, fn: (url: string) => void): void {
  const url = redisUrl();
  if (!url) {
    // eslint-disable-next-line no-console
    console.warn(`\n!!! SKIPPED "${name}": no test Redis (install redis-server or set REDIS_URL)\n`);
    describe.skip(name, () => fn('redis://skipped'));
    return;
  }
  describe(name, () => fn(url));
}

/** Is the redis-server binary available (for suites that spawn their own)? */
export function hasRedisServer(): boolean {
  const paths = (process.env.PATH ?? '').split(':');
  return paths.some((p) => existsSync(`${p}/redis-server`));
}

export { freePort, waitForPort };

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` until it returns true; resolves with the elapsed ms, or throws after `ms`. */
export async function waitFor(check: () => boolean | Promise<boolean>, ms = 3000, every = 10): Promise<number> {
  const start = Date.now();
  while (Date.now() - start < ms) {
    if (await check()) return Date.now() - start;
    await sleep(every);
  }
  throw new Error(`condition not met within ${ms} ms`);
}

export interface OwnRedis {
  port: number;
  url: string;
  process: ChildProcess;
  /** SIGKILL, resolving when the process has exited. */
  kill(): Promise<void>;
}

/** Starts a redis-server of our own (no persistence) on `port` (default: a free one). */
export async function startRedisServer(port?: number, extra: string[] = []): Promise<OwnRedis> {
  const p = port ?? (await freePort());
  const child = spawn('redis-server', ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...extra], {
    stdio: 'ignore',
  });
  await waitForPort(p, 10_000);
  return {
    port: p,
    url: `redis://127.0.0.1:${p}`,
    process: child,
    kill: () => stopProcess(child, 'SIGKILL'),
  };
}

export function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const t = setTimeout(resolve, 3000);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill(signal);
  });
}

/** Deletes every key under `prefix` on one node (SCAN + DEL, never FLUSHALL: suites share the server). */
export async function flushPrefix(send: (args: string[]) => Promise<unknown>, prefix: string): Promise<number> {
  const pattern = `${prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}*`;
  let cursor = '0';
  let n = 0;
  do {
    const [next, keys] = (await send(['SCAN', cursor, 'MATCH', pattern, 'COUNT', '1000'])) as [string, string[]];
    cursor = String(next);
    for (const k of keys) n += Number(await send(['DEL', k]));
  } while (cursor !== '0');
  return n;
}

export interface OwnCluster {
  ports: number[];
  urls: string[];
  stop(): Promise<void>;
}

/**
 * Starts a real Redis Cluster of `size` masters (no replicas) on free loopback ports, with its
 * node files in a temp dir, and waits until every node reports cluster_state:ok.
 */
export async function startCluster(size = 3): Promise<OwnCluster> {
  const run = (args: string[]) => new Promise<string>((resolve, reject) => {
    execFile('redis-cli', args, { timeout: 15_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
  });
  const dir = mkdtempSync(path.join(tmpdir(), 'ecd-cluster-'));
  const nodes: OwnRedis[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => stopProcess(n.process, 'SIGKILL')));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < size; i++) {
      const port = await freePort();
      nodes.push(await startRedisServer(port, [
        '--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${port}.conf`), '--dir', dir,
        '--cluster-node-timeout', '5000',
      ]));
    }
    const ports = nodes.map((n) => n.port);
    await run(['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    await waitFor(async () => {
      const infos = await Promise.all(ports.map((p) => run(['-p', String(p), 'cluster', 'info'])));
      return infos.every((i) => i.includes('cluster_state:ok') && i.includes(`cluster_known_nodes:${size}`));
    }, 15_000, 100);
    return { ports, urls: ports.map((p) => `redis://127.0.0.1:${p}`), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
