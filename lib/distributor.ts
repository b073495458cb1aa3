// The distributor() factory and the per-request pipeline:
// parse -> routing checks -> affinity lookup -> select + setup (fallback) -> next() -> finish.
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { matchAffinity } from './affinity/key';
import { releaseStalePin, reserveSession, startReservation, usePin } from './affinity/lookup';
import type { ChannelRegistry } from './channels/registry';
import { DistributorError, errorBody } from './errors';
import { callHook, markStart } from './hooks';
import { resolveOptions, type Config, type DistributorOptions } from './options';
import { parseRequest, type ParsedRequest } from './request/extract';
import { resolveRouting, type Routing } from './request/routing';
import { RequestRun } from './run/request-run';
import { selectWithFallback } from './selection/fallback';
import { createRuntime, type Runtime } from './runtime';
import { drive, type Steps } from './steps';
import { TRACE_HEADER, traceHeaderValue } from './trace';
import type { Store } from './stores/store';
import { ChannelStatus, type ChannelHealth, type RequestContext } from './types';
import { runValidations } from './validations';

/** The middleware, with the registry and store it uses and a `shutdown()`. */
export interface DistributorHandler extends RequestHandler {
  readonly registry: ChannelRegistry;
  readonly store: Store;
  /** Stops timers and subscriptions this distributor started; never closes a client you passed in. */
  shutdown(): Promise<void>;
  /** Re-reads shared health and status overrides from the store now. */
  syncHealth(): Promise<void>;
  /** Is a channel cooling down on this instance's view? */
  isCoolingDown(channelId: number): boolean;
  /** A channel's status, cooldown and disabled keys on this instance's view; undefined for an unknown id. */
  health(channelId: number): ChannelHealth | undefined;
}

const runtimes = new WeakMap<DistributorHandler, Runtime>();

/** @internal The runtime behind a handler (for the admin helpers). */
export function runtimeOf(handler: DistributorHandler): Runtime | undefined {
  return runtimes.get(handler);
}

function sendError(cfg: Config, err: DistributorError, req: Request, res: Response, next: NextFunction): void {
  if (err.retryAfterSeconds !== undefined && !res.headersSent) res.setHeader('retry-after', String(err.retryAfterSeconds));
  if (cfg.onError) {
    let nextCalled = false;
    const guardedNext: NextFunction = (e?: unknown) => {
      nextCalled = true;
      next(e);
    };
    try {
      cfg.onError(err, req, res, guardedNext);
    } catch (e) {
      // a handler that already answered or called next() must not cause a second response
      if (!nextCalled && !res.headersSent) next(e);
      else cfg.logger.error('onError threw after handling the error', { error: e instanceof Error ? e.message : String(e) });
    }
    return;
  }
  if (res.headersSent) {
    next(err);
    return;
  }
  res.status(err.status).json(errorBody(err));
}

/** The per-request pipeline, one line a stage (see docs/architecture.md). */
function* distribute(rt: Runtime, req: Request, res: Response): Steps<'next' | DistributorError> {
  const { cfg } = rt;
  if (cfg.shouldSelect && !cfg.shouldSelect(req)) return notSelected(rt, req, res);
  const parsed = yield* parseRequest(req, cfg);
  const routing = resolveRouting(cfg, (yield cfg.context(req, res)) as RequestContext | undefined, parsed);
  const run = start(rt, req, res, routing, parsed.model);
  if (routing.specificChannelId !== undefined) return yield* specificChannel(rt, run, parsed, routing.specificChannelId);
  if (!parsed.model) return new DistributorError('model_required', 'Model name not specified, model name cannot be empty', 400);
  let ok = cfg.affinity.enabled && cfg.affinity.rules.length > 0 && (yield* usePin(rt, run, req, res, parsed));
  // a new session's reservation shares its round trip with a limited channel's slot request
  if (!ok && run.match && cfg.affinity.coalesce) run.reserveBeside = (ch, k) => startReservation(rt, run, ch, k);
  if (!ok) ok = yield* selectWithFallback(run, cfg.retry.times + 1, 'select', run.groups);
  if (!ok && run.sawFull) {
    const waited = yield* waitForSlot(rt, run);
    if (waited !== true) return waited;
    ok = true;
  }
  if (!ok) return yield* noChannel(rt, run);
  if (run.match && run.d.affinity?.used === false && cfg.affinity.coalesce) yield* reserveSession(rt, run);
  if (cfg.traceHeader) res.setHeader(TRACE_HEADER, traceHeaderValue(run.d.trace));
  if (rt.debug) debugSelected(rt, run);
  return 'next';
}

/** The request's run: `res.locals.distribution`, counted as active until its response is done. */
function start(rt: Runtime, req: Request, res: Response, routing: Routing, model: string): RequestRun {
  const run = new RequestRun(rt, req, res, routing.ctx, model, routing.group, routing.groups, routing.specificChannelId !== undefined);
  res.locals.distribution = run.d;
  rt.counters.active++;
  // 'close' follows 'finish' on every response and also covers a connection closed early.
  // `on`, not `once`: 'close' fires once per response, and `once` allocates a wrapper per request.
  res.on('close', () => run.finalize(res.writableFinished));
  // The client may have gone while the body or the context was awaited: 'close' already fired.
  if (res.closed) run.finalize(res.writableFinished);
  return run;
}

/**
 * Every candidate is at its limits (selection.overflow): wait in FIFO order up to `queueMs` for
 * a slot (the head looks again when a slot is released here, else every 100 ms), else 429
 * `channels_saturated` with `Retry-After`. A full queue (`maxQueued`) answers 429 at once.
 */
function* waitForSlot(rt: Runtime, run: RequestRun): Steps<true | DistributorError> {
  const { cfg, limits } = rt;
  const { queueMs, maxQueued } = cfg.selection.overflow;
  const queue = limits.queue;
  if (queueMs > 0 && queue.length < maxQueued) {
    const deadline = Date.now() + queueMs;
    const w = queue.join();
    if (cfg.on.saturated) callHook(cfg, 'saturated', { req: run.req, outcome: 'queued', retryAfterMs: limits.soonestRoomMs(Date.now()) });
    const signal = run.signal();
    try {
      for (;;) {
        if (signal.aborted) break;
        if (queue.isHead(w)) {
          run.forgetFull();
          if (yield* selectWithFallback(run, cfg.retry.times + 1, 'select', run.groups)) {
            run.note('queued');
            return true;
          }
          if (!run.sawFull) return yield* noChannel(rt, run); // nothing left that could ever serve
        }
        const now = Date.now();
        if (now >= deadline) break;
        yield queue.wait(w, Math.min(deadline - now, limits.soonestRoomMs(now)), signal);
      }
    } finally {
      queue.leave(w);
    }
  }
  const retryAfterMs = limits.soonestRoomMs(Date.now());
  if (cfg.on.saturated) callHook(cfg, 'saturated', { req: run.req, outcome: 'rejected', retryAfterMs });
  run.note('saturated');
  const shown = run.group === 'auto' ? `auto(${run.lastGroup ?? ''})` : run.group;
  return new DistributorError('channels_saturated', `Every channel for model ${run.model} under group ${shown} is at its limits; try again later`, 429,
    Math.max(1, Math.ceil(retryAfterMs / 1000)));
}

/** No channel sets up: a stale pin whose clearing waited for the reservation goes now; then 503. */
function* noChannel(rt: Runtime, run: RequestRun): Steps<DistributorError> {
  yield* releaseStalePin(rt, run);
  return run.noChannelError();
}

function debugSelected(rt: Runtime, run: RequestRun): void {
  const { d } = run;
  rt.cfg.logger.debug?.('channel selected', {
    channelId: run.current?.id, group: d.selectedGroup, model: d.model, rule: d.affinity?.rule,
    fingerprint: run.match?.fingerprint, stale: d.affinity?.stale, tried: d.tried, attempts: d.attempts,
  });
}

function* specificChannel(rt: Runtime, run: RequestRun, parsed: ParsedRequest, id: number): Steps<'next' | DistributorError> {
  const { req, res } = run;
  const ch = rt.registry.get(id);
  if (!ch) return new DistributorError('invalid_channel_id', 'Invalid channel ID', 400);
  if (ch.status !== ChannelStatus.Enabled) return new DistributorError('channel_disabled', 'This channel has been disabled', 403);
  // No affinity here, but a value a rule would key on still stays out of setup error messages and logs.
  if (rt.cfg.affinity.enabled) {
    const m = matchAffinity(rt.cfg.affinity.rules, { req, res, model: run.model, path: parsed.path, group: run.group, ctx: run.ctx, body: parsed.body });
    if (m) (run.secrets ??= []).push(m.rawValue);
  }
  if (!(yield* run.trySetup(ch, run.group))) {
    const { attempts } = run.d;
    const last = attempts[attempts.length - 1]?.reason ?? 'setup failed';
    return new DistributorError('channel_setup_failed', `Channel ${id} could not be set up: ${last}`, 503);
  }
  run.note(`specific ch=${id}`);
  if (rt.cfg.on.select) callHook(rt.cfg, 'select', { req, channel: run.observedChannel(), group: run.group, model: run.model, reason: 'specific' });
  return 'next';
}

function finish(cfg: Config, out: 'next' | DistributorError, req: Request, res: Response, next: NextFunction): void {
  if (out === 'next') next();
  else sendError(cfg, out, req, res, next);
}

function failed(cfg: Config, err: unknown, req: Request, res: Response, next: NextFunction): void {
  if (err instanceof DistributorError) sendError(cfg, err, req, res, next);
  else next(err);
}

/** `shouldSelect` said no: a record with `selected: false`, and nothing else happens. */
function notSelected(rt: Runtime, req: Request, res: Response): 'next' {
  const run = new RequestRun(rt, req, res, {}, '', '', [], false);
  res.locals.distribution = run.d;
  rt.counters.active++;
  res.on('close', () => run.finalize(false));
  if (res.closed) run.finalize(false);
  return 'next';
}

/**
 * Creates the distributor middleware.
 *
 * @example
 * app.use('/v1', distributor({ channels: [{ id: 1, models: 'gpt-4o', key: 'sk-...' }] }));
 * app.post('/v1/chat/completions', (req, res) => relayTo(res.locals.channel));
 */
export function distributor(options: DistributorOptions): DistributorHandler {
  const cfg = resolveOptions(options);
  const validations = runValidations(cfg, options);
  const rt = createRuntime(cfg, validations.warn);
  rt.health.start();

  const handler = function distributorMiddleware(req: Request, res: Response, next: NextFunction): void {
    if (cfg.on.select) markStart(req); // only the select hook reads it (elapsedMs)
    // Synchronous to the end when nothing on the way is a promise (see steps.ts): no microtask
    // between the request and next() with the embedded store and synchronous callbacks.
    let out: 'next' | DistributorError | Promise<'next' | DistributorError>;
    try {
      out = drive(distribute(rt, req, res));
    } catch (err) {
      failed(cfg, err, req, res, next);
      return;
    }
    if (out instanceof Promise) out.then((o) => finish(cfg, o, req, res, next), (err: unknown) => failed(cfg, err, req, res, next));
    else finish(cfg, out, req, res, next);
  } as DistributorHandler;

  Object.defineProperties(handler, {
    registry: { value: cfg.registry, enumerable: true },
    store: { value: cfg.store, enumerable: true },
    shutdown: {
      value: async () => {
        validations.release();
        rt.health.stop();
        await rt.limits.shutdown();
        if (cfg.ownsStore) await cfg.store.shutdown?.();
      },
    },
    syncHealth: { value: () => rt.health.sync() },
    isCoolingDown: { value: (id: number) => rt.health.isCooling(id) },
    health: {
      value: (id: number): ChannelHealth | undefined => {
        const ch = rt.registry.get(id);
        if (!ch) return undefined;
        const until = rt.health.cooldownUntil(id);
        const latency: ChannelHealth['latency'] = {};
        for (const m of ch.models) {
          const s = rt.latency.stat(id, m);
          if (s) latency[m] = { avgMs: Math.round(s.avg * 10) / 10, samples: s.n };
        }
        return {
          id, status: ch.status, coolingDown: until !== undefined, cooldownUntil: until ?? null, disabledKeys: [...ch.disabledKeys].sort((a, b) => a - b),
          ejectedUntil: rt.health.ejectedUntil(id), coolingKeys: rt.health.coolingKeys(id), inFlight: rt.limits.inFlight(id), latency,
        };
      },
    },
  });
  runtimes.set(handler, rt);
  return handler;
}
