// Admin helpers over a distributor (clear and count pins, read a channel's health) and an
// optional Express router exposing them behind a guard the user supplies.
import { Router, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { PIN_NAMESPACE, pinKeyPrefix, ruleNameOfPinKey } from './affinity/layout';
import { runtimeOf, type DistributorHandler } from './distributor';
import { DistributorError, errorBody } from './errors';
import type { AffinityRuleReport } from './affinity/usage';
import type { Runtime } from './runtime';
import type { ChannelHealth } from './types';

/** Which pins to delete: those of one rule (by its name; `'_'`: rules without `includeRuleName`), or all. */
export type ClearPinsTarget = { rule: string; all?: never } | { all: true; rule?: never };

export interface DistributorAdmin {
  /** Deletes pins; resolves to how many. Needs a store with `clearPins`. */
  clearPins(target: ClearPinsTarget): Promise<number>;
  /** Live pins per rule name (`'_'` for rules without `includeRuleName`). Needs a store with `countPins`. */
  countPins(): Promise<Record<string, number>>;
  /** Status, cooldown and disabled keys of a channel on this instance's view; undefined for an unknown id. */
  channelHealth(channelId: number): ChannelHealth | undefined;
  /**
   * Does affinity pay? Per rule name, since this distributor started (this instance only): lookups,
   * hits (the pin served), hitRate, and on hits and on misses the usage reports, input and cached
   * tokens and their ratio (null without input tokens). Rules that never matched are absent.
   */
  affinityReport(): Record<string, AffinityRuleReport>;
}

export type { AffinityRuleReport };

export interface AdminRouterOptions {
  /** Required: the middleware that authorises admin calls (it runs before every route). */
  guard: RequestHandler | RequestHandler[];
}

const invalid = (message: string) => new DistributorError('ERR_DIST_INVALID_OPTIONS', message);

function runtime(handler: DistributorHandler): Runtime {
  const rt = typeof handler === 'function' ? runtimeOf(handler) : undefined;
  if (!rt) throw invalid('expected the handler returned by distributor()');
  return rt;
}

/**
 * Admin operations on a distributor.
 *
 * @example
 * const admin = distributorAdmin(handler);
 * await admin.clearPins({ rule: 'claude cli trace' });
 */
export function distributorAdmin(handler: DistributorHandler): DistributorAdmin {
  const rt = runtime(handler);
  const { store } = rt.cfg;
  return {
    async clearPins(target) {
      if (!target || typeof target !== 'object') throw invalid('clearPins() needs { rule } or { all: true }');
      if (!store.clearPins) throw new DistributorError('ERR_DIST_INVALID_STORE', 'the store does not implement clearPins()');
      if (target.all === true && target.rule === undefined) return store.clearPins(PIN_NAMESPACE);
      if (typeof target.rule !== 'string' || !target.rule || target.all !== undefined) {
        throw invalid('clearPins() needs either a rule name or { all: true }');
      }
      if (target.rule === '_') return store.clearPins(pinKeyPrefix({ name: '_', includeRuleName: false }));
      const rule = rt.cfg.affinity.rules.find((r) => r.name === target.rule);
      if (rule && !rule.includeRuleName) {
        throw invalid(`affinity rule "${rule.name}" does not put its name in keys (includeRuleName is false), so its pins cannot be told apart; clear { rule: '_' } (every such rule) or { all: true }`);
      }
      // An unknown name may still have pins in a shared store (a rule another instance has).
      return store.clearPins(pinKeyPrefix({ name: target.rule, includeRuleName: true }));
    },
    async countPins() {
      if (!store.countPins) throw new DistributorError('ERR_DIST_INVALID_STORE', 'the store does not implement countPins()');
      return store.countPins(ruleNameOfPinKey);
    },
    channelHealth(channelId) {
      return handler.health(channelId);
    },
    affinityReport() {
      return rt.usage.report();
    },
  };
}

function sendAdminError(err: unknown, res: Response, next: NextFunction): void {
  if (!(err instanceof DistributorError)) {
    next(err);
    return;
  }
  const status = err.code === 'ERR_DIST_INVALID_STORE' ? 501 : err.code === 'ERR_DIST_INVALID_OPTIONS' ? 400 : err.status;
  res.status(status).json(errorBody(err));
}

/** Express 4 ignores rejected promises: route errors are caught and handed over here. */
function route(fn: (req: Request, res: Response) => Promise<void> | void): RequestHandler {
  return (req, res, next) => {
    Promise.resolve()
      .then(() => fn(req, res))
      .catch((err: unknown) => sendAdminError(err, res, next));
  };
}

/**
 * An Express router over the admin helpers, every route behind `options.guard`:
 * `GET /pins`, `DELETE /pins?rule=NAME` or `DELETE /pins?all=true`, `GET /channels/:id/health`,
 * `GET /affinity` (`affinityReport()`, as is).
 *
 * @example
 * app.use('/admin/distributor', adminRouter(handler, { guard: requireAdminToken }));
 */
export function adminRouter(handler: DistributorHandler, options: AdminRouterOptions): Router {
  const guards = options && options.guard !== undefined ? ([] as unknown[]).concat(options.guard) : [];
  if (guards.length === 0 || guards.some((g) => typeof g !== 'function')) {
    throw invalid('adminRouter() needs options.guard: a middleware that authorises admin calls');
  }
  const admin = distributorAdmin(handler);
  const router = Router();
  router.use(...(guards as RequestHandler[]));
  router.get('/pins', route(async (_req, res) => {
    const pins = await admin.countPins();
    res.json({ pins, total: Object.values(pins).reduce((a, b) => a + b, 0) });
  }));
  router.delete('/pins', route(async (req, res) => {
    const rule = typeof req.query.rule === 'string' ? req.query.rule : undefined;
    const all = req.query.all === 'true';
    if (rule !== undefined && all) throw invalid('give either ?rule=NAME or ?all=true, not both');
    if (rule === undefined && !all) throw invalid('give ?rule=NAME or ?all=true');
    const cleared = await admin.clearPins(all ? { all: true } : { rule: rule as string });
    res.json({ cleared });
  }));
  router.get('/affinity', route((_req, res) => {
    res.json(admin.affinityReport());
  }));
  router.get('/channels/:id/health', route((req, res) => {
    const id = Number(req.params.id);
    if (!Number.isInteger(id) || id <= 0) throw new DistributorError('invalid_channel_id', 'Invalid channel ID', 400);
    const health = admin.channelHealth(id);
    if (!health) throw new DistributorError('invalid_channel_id', `Unknown channel ${id}`, 404);
    res.json(health);
  }));
  return router;
}
