// Calls a user hook; a throwing hook is logged and never breaks a request.
import type { Request } from 'express';
import type { DistributorHooks } from './types';
import type { Logger } from './types';

/** When the distributor started on each request (for the `select` event's `elapsedMs`). */
const started = new WeakMap<Request, number>();

/** Records the start of a request's decision (called once by the middleware). */
export function markStart(req: Request): void {
  started.set(req, performance.now());
}

export function callHook<K extends keyof DistributorHooks>(
  cfg: { on: DistributorHooks; logger: Logger },
  name: K,
  event: Parameters<NonNullable<DistributorHooks[K]>>[0],
): void {
  const hook = cfg.on[name] as ((e: typeof event) => void) | undefined;
  if (!hook) return;
  if (name === 'select') {
    const e = event as { req: Request; elapsedMs?: number };
    const t0 = started.get(e.req);
    if (t0 !== undefined && e.elapsedMs === undefined) e.elapsedMs = performance.now() - t0;
  }
  try {
    hook(event);
  } catch (e) {
    try {
      cfg.logger.warn(`hook "${name}" threw`, { error: e instanceof Error ? e.message : String(e) });
    } catch {
      /* neither a hook nor the logger may break a request or reject a background task */
    }
  }
}

/**
 * Combines several hook objects into one: each event goes to every object that handles it, in
 * order. A throwing hook does not stop the others; the first error is rethrown afterwards (and
 * logged by the distributor).
 *
 * @example
 * distributor({ channels, on: mergeHooks(metrics.hooks, { exhausted: (e) => alert(e) }) });
 */
export function mergeHooks(...sets: Array<DistributorHooks | undefined>): DistributorHooks {
  const out: Record<string, (e: unknown) => void> = {};
  const names = new Set<string>();
  for (const s of sets) for (const k of Object.keys(s ?? {})) names.add(k);
  for (const name of names) {
    const fns = sets
      .map((s) => (s as Record<string, unknown> | undefined)?.[name])
      .filter((f): f is (e: unknown) => void => typeof f === 'function');
    out[name] = (e: unknown) => {
      let first: { error: unknown } | undefined;
      for (const f of fns) {
        try {
          f(e);
        } catch (err) {
          first ??= { error: err };
        }
      }
      if (first) throw first.error;
    };
  }
  return out as DistributorHooks;
}
