// Shared bench helpers: spawn a server, wait for its port, run autocannon, read server CPU.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import autocannon from 'autocannon';

export interface Server {
  name: string;
  proc: ChildProcess;
  port: number;
}

export function waitPort(port: number, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tryOnce = () => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.end();
        resolve();
      });
      s.on('error', () => {
        if (Date.now() > end) reject(new Error(`port ${port} not ready`));
        else setTimeout(tryOnce, 50);
      });
    };
    tryOnce();
  });
}

export async function start(name: string, script: string, port: number, env: Record<string, string>): Promise<Server> {
  const proc = spawn(process.execPath, [script], { env: { ...process.env, ...env, PORT: String(port) }, stdio: ['ignore', 'ignore', 'inherit'] });
  await waitPort(port);
  return { name, proc, port };
}

export async function stop(s: Server): Promise<void> {
  if (s.proc.exitCode !== null) return;
  await new Promise<void>((resolve) => {
    const t = setTimeout(() => {
      s.proc.kill('SIGKILL');
      resolve();
    }, 5000);
    s.proc.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    s.proc.kill('SIGTERM');
  });
}

/**
 * Pins the load generator (this process) to CPU 0 and the servers to CPU 1 with `taskset`, so the
 * two do not migrate between the cores and take turns on one (on a 2-core machine this halved
 * the round-to-round spread). No-op with PIN=0, without taskset or with fewer than 2 CPUs.
 */
export function pinCpus(servers: Server[]): boolean {
  if (process.env.PIN === '0' || os.cpus().length < 2) return false;
  try {
    execFileSync('taskset', ['-pc', '0', String(process.pid)], { stdio: 'ignore' });
    for (const s of servers) execFileSync('taskset', ['-apc', '1', String(s.proc.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** CPU time (user+sys, in µs) a process has used so far, from /proc. */
export function cpuMicros(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const parts = f.slice(f.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(parts[11]) + Number(parts[12]);
    return (ticks * 1e6) / 100; // CLK_TCK is 100 on Linux
  } catch {
    return NaN;
  }
}

export interface LoadResult {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
  cpuUsPerReq: number;
}

export async function load(s: Server, opts: { path: string; body: string; headers?: Record<string, string>; duration: number; connections: number }): Promise<LoadResult> {
  const cpu0 = cpuMicros(s.proc.pid as number);
  const r = await autocannon({
    url: `http://127.0.0.1:${s.port}${opts.path}`,
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(opts.headers ?? {}) },
    body: opts.body,
    duration: opts.duration,
    connections: opts.connections,
    pipelining: 1,
  });
  const cpu1 = cpuMicros(s.proc.pid as number);
  const total = r.requests.total || 1;
  return {
    rps: r.requests.average,
    p50: r.latency.p50,
    p99: r.latency.p99,
    errors: r.errors + r.timeouts,
    non2xx: r.non2xx,
    cpuUsPerReq: (cpu1 - cpu0) / total,
  };
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** A number >= 0 from the environment (a bench knob), or `dflt` when unset. */
export function envNumber(name: string, dflt: number): number {
  const v = process.env[name];
  const n = v === undefined || v === '' ? dflt : Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number >= 0`);
  return n;
}
