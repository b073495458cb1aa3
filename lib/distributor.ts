// The distributor() factory and the per-request pipeline:
// parse -> routing checks -> affinity lookup -> select + setup (fallback) -> next() -> finish.
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { matchAffinity } from './affinity/key';
import { usePin } from './affinity/lookup';
import type { ChannelRegistry } from './channels/registry';
import { DistributorError, errorBody } from './errors';
import { callHook, markStart } from './hooks';
import { resolveOptions, type Config, type DistributorOptions } from './options';
import { parseRequestNow, parseRequest, type ParsedRequest } from './request/extract';
import { resolveRouting } from './request/routing';
import { RequestRun } from './retry/distribution';
import { createRuntime, type Runtime } from './runtime';
import { drive, isThenable, type Steps } from './steps';
import { TRACE_HEADER, traceHeaderValue } from './trace';
import type { Store } from './stores/store';
import { ChannelStatus, type ChannelHealth } from './types';
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

function* distribute(rt: Runtime, req: Request, res: Response): Steps<'next' | DistributorError> {
  const { cfg } = rt;
  if (cfg.shouldSelect && !cfg.shouldSelect(req)) {
    res.locals.distribution = notSelected(rt, req, res);
    return 'next';
  }
  const parsed = parseRequestNow(req, cfg) ?? (yield* parseRequest(req, cfg));
  const context = cfg.context(req, res);
  const routing = resolveRouting(cfg, isThenable(context) ? ((yield context) as Awaited<typeof context>) : context, parsed);
  const run = new RequestRun(rt, req, res, routing.ctx, parsed.model, routing.group, routing.groups, routing.specificChannelId !== undefined);
  res.locals.distribution = run;
  rt.counters.active++;
  // 'close' follows 'finish' on every response and also covers a connection closed early.
  // `on`, not `once`: 'close' fires once per response, and `once` allocates a wrapper per request.
  res.on('close', () => run.finalize(res.writableFinished));
  // The client may have gone while the body or the context was awaited: 'close' already fired.
  if (res.closed) run.finalize(res.writableFinished);
  if (routing.specificChannelId !== undefined) return yield* specificChannel(rt, run, req, res, parsed, routing.specificChannelId);
  if (!parsed.model) return new DistributorError('model_required', 'Model name not specified, model name cannot be empty', 400);
  let ok = cfg.affinity.enabled && cfg.affinity.rules.length > 0 && (yield* usePin(rt, run, req, res, parsed));
  if (!ok) ok = yield* run.selectWithFallback(cfg.retry.times + 1, 'select', run.groups);
  if (!ok) return run.noChannelError();
  if (cfg.traceHeader) res.setHeader(TRACE_HEADER, traceHeaderValue(run.trace));
  if (rt.debug) {
    cfg.logger.debug?.('channel selected', {
      channelId: run.current?.id, group: run.selectedGroup, model: run.model, rule: run.affinity?.rule,
      fingerprint: run.match?.fingerprint, stale: run.affinity?.stale, tried: run.tried, attempts: run.attempts,
    });
  }
  return 'next';
}

function* specificChannel(rt: Runtime, run: RequestRun, req: Request, res: Response, parsed: ParsedRequest, id: number): Steps<'next' | DistributorError> {
  const ch = rt.registry.get(id);
  if (!ch) return new DistributorError('invalid_channel_id', 'Invalid channel ID', 400);
  if (ch.status !== ChannelStatus.Enabled) return new DistributorError('channel_disabled', 'This channel has been disabled', 403);
  // No affinity here, but a value a rule would key on still stays out of setup error messages and logs.
  if (rt.cfg.affinity.enabled) {
    const m = matchAffinity(rt.cfg.affinity.rules, { req, res, model: run.model, path: parsed.path, group: run.group, ctx: run.ctx, body: parsed.body });
    if (m) (run.secrets ??= []).push(m.rawValue);
  }
  const setUp = run.trySetup(ch, run.group);
  if (!(isThenable(setUp) ? yield setUp : setUp)) {
    const last = run.attempts[run.attempts.length - 1]?.reason ?? 'setup failed';
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

function notSelected(rt: Runtime, req: Request, res: Response): RequestRun {
  const run = new RequestRun(rt, req, res, {}, '', '', [], false);
  rt.counters.active++;
  res.on('close', () => run.finalize(false));
  if (res.closed) run.finalize(false);
  return run;
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
  const releaseValidations = runValidations(cfg, options);
  const rt = createRuntime(cfg);
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
        releaseValidations();
        rt.health.stop();
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
        return { id, status: ch.status, coolingDown: until !== undefined, cooldownUntil: until ?? null, disabledKeys: [...ch.disabledKeys].sort((a, b) => a - b) };
      },
    },
  });
  runtimes.set(handler, rt);
  return handler;
}
