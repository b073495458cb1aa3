// Load: 1,000 concurrent requests of 200 sessions (100 per tenant) through the example gateway, in
// rounds, run by load/run-load.ts in a child process with --expose-gc (so heap readings follow a
// real GC). Checked: every answer is a 200 from the channel the distributor chose for that very
// request (x-distributor-trace agrees with the body), every session stays on its pinned channel,
// pins stay at one per session, nothing is left in flight, the heap is flat from round to round and
// back to its baseline after close, and no timer, socket or listener outlives the gateway.
import { describe, expect, test } from '@jest/globals';
import { execFile } from 'node:child_process';
import path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const ROUNDS = 6;

interface Round {
  round: number; requests: number; ok: number; crossTalk: number; offPin: number; sessionsOnOneChannel: number;
  wallMs: number; rps: number; p50: number; p99: number; max: number; pins: number;
  registryListeners: number; storeListeners: number; serverRequestListeners: number; active: number; retrying: number;
}
interface Result {
  error?: string;
  sessions: number;
  pinsAfterPinning: number;
  tenantsOnDifferentChannels: number;
  rounds: Round[];
  heapMb: { beforeStart: number; afterEachRound: number[]; afterClose: number };
  cold: { sessions: number; requests: number; ok: number; splitAcrossChannels: number; stuckAfterFirstPin: number };
  pinsAtEnd: number;
  resourcesBefore: Record<string, number>;
  resourcesAfter: Record<string, number>;
  listenersBefore: Record<string, number>;
  listenersAfter: Record<string, number>;
  faults: { unhandledRejections: number; uncaughtExceptions: number; warnings: string[] };
}

function runLoad(): Promise<Result> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--expose-gc', '--import', 'tsx', path.join(__dirname, 'load', 'run-load.ts'), String(ROUNDS)], {
      cwd: ROOT, timeout: 55_000, maxBuffer: 16 * 1024 * 1024,
    }, (err, stdout, stderr) => {
      const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
      if (!line) {
        reject(new Error(`load run printed no RESULT (${err?.message ?? ''})\n${stderr.slice(-2000)}`));
        return;
      }
      resolve(JSON.parse(line.slice(7)) as Result);
    });
  });
}

describe('1,000 concurrent requests, 200 sessions, through the example gateway', () => {
  let r: Result;

  test('the run completes without an unhandled rejection, an uncaught exception or a process warning', async () => {
    r = await runLoad();
    expect(r.error).toBeUndefined();
    expect(r.faults).toEqual({ unhandledRejections: 0, uncaughtExceptions: 0, warnings: [] });
    expect(r.rounds).toHaveLength(ROUNDS);
    // eslint-disable-next-line no-console
    console.log(`load figures: ${JSON.stringify({
      rounds: r.rounds.map(({ round, requests, ok, crossTalk, offPin, wallMs, rps, p50, p99, max, pins }) => ({ round, requests, ok, crossTalk, offPin, wallMs, rps, p50, p99, max, pins })),
      heapMb: r.heapMb, cold: r.cold, tenantsOnDifferentChannels: r.tenantsOnDifferentChannels, resourcesBefore: r.resourcesBefore, resourcesAfter: r.resourcesAfter,
    })}`);
  }, 60_000);

  test('every answer is a 200 carrying the channel chosen for that request (no cross-talk)', () => {
    for (const round of r.rounds) {
      expect({ round: round.round, requests: round.requests, ok: round.ok, crossTalk: round.crossTalk })
        .toEqual({ round: round.round, requests: 1000, ok: 1000, crossTalk: 0 });
    }
  });

  test('every session stays on its pinned channel while it is healthy; tenants sharing a session name are pinned independently', () => {
    expect(r.pinsAfterPinning).toBe(200);
    for (const round of r.rounds) {
      expect({ round: round.round, offPin: round.offPin, sessionsOnOneChannel: round.sessionsOnOneChannel }).toEqual({ round: round.round, offPin: 0, sessionsOnOneChannel: 200 });
    }
    // with one shared key the last writer would have moved the other tenant's session (offPin > 0)
    expect(r.tenantsOnDifferentChannels).toBeGreaterThan(0);
  });

  test('pins stay at one per session; nothing is left in flight; listeners do not accumulate', () => {
    for (const round of r.rounds) {
      expect(round.pins).toBe(200);
      expect([round.active, round.retrying]).toEqual([0, 0]);
      expect([round.registryListeners, round.storeListeners, round.serverRequestListeners]).toEqual([r.rounds[0].registryListeners, r.rounds[0].storeListeners, 1]);
    }
    expect(r.pinsAtEnd).toBe(250); // + the 50 cold sessions
  });

  test('the heap is flat from round to round and returns to its baseline after close', () => {
    const [, ...steady] = r.heapMb.afterEachRound; // round 1 grows the connection pools
    expect(Math.max(...steady) - Math.min(...steady)).toBeLessThan(2);
    expect(steady[steady.length - 1] - steady[0]).toBeLessThan(1.5);
    expect(r.heapMb.afterClose - r.heapMb.beforeStart).toBeLessThan(2.5);
  });

  test('no timer, socket, server or process listener outlives the gateway', () => {
    for (const [type, n] of Object.entries(r.resourcesAfter)) expect({ type, n }).toEqual({ type, n: Math.min(n, r.resourcesBefore[type] ?? 0) });
    expect(r.resourcesAfter.Timeout ?? 0).toBe(0);
    expect(r.resourcesAfter.TCPSocketWrap ?? 0).toBe(0);
    expect(r.resourcesAfter.TCPServerWrap ?? 0).toBe(0);
    for (const [event, n] of Object.entries(r.listenersAfter)) expect(n).toBeLessThanOrEqual(r.listenersBefore[event] ?? 0);
  });

  test('cold sessions (no pin yet, 5 concurrent first requests each) all succeed and stick once pinned', () => {
    expect(r.cold.ok).toBe(r.cold.requests);
    expect(r.cold.stuckAfterFirstPin).toBe(r.cold.sessions);
    // Observation, not a guarantee: concurrent first requests of a session are placed independently
    // (there is no pin to read yet); r.cold.splitAcrossChannels counts such sessions.
  });
});
