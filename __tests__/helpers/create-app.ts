// A tiny Express app around a distributor, with a route that echoes the decision (HPM test-kit style).
import { afterAll } from '@jest/globals';
import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import { distributor, type DistributorHandler } from '../../lib';
import type { DistributorOptions, Logger, RequestContext } from '../../lib';

export interface TestApp {
  app: Express;
  mw: DistributorHandler;
}

/** A logger that records every line (for assertions) and prints nothing. */
export function memoryLogger(): Logger & { lines: Array<{ level: string; message: string; meta?: unknown }>; text(): string } {
  const lines: Array<{ level: string; message: string; meta?: unknown }> = [];
  const rec = (level: string) => (message: string, meta?: Record<string, unknown>) => {
    lines.push({ level, message, meta });
  };
  return {
    lines,
    error: rec('error'),
    warn: rec('warn'),
    info: rec('info'),
    debug: rec('debug'),
    text: () => JSON.stringify(lines),
  };
}

/**
 * Builds `auth (x-test-context header -> res.locals.token) -> distributor -> echo route`.
 * The echo answers `{ channel, distribution }`; `x-echo-status` makes it answer that status, and
 * `x-echo-report` reports that status as the upstream's failure first (`distribution.fail()`).
 */
export function createApp(options: Partial<DistributorOptions> & Pick<DistributorOptions, 'channels'>, extra?: {
  before?: (app: Express) => void;
  mount?: string;
  handler?: (req: Request, res: Response, next: NextFunction) => void;
}): TestApp {
  const app = express();
  extra?.before?.(app);
  app.use((req, res, next) => {
    const h = req.headers['x-test-context'];
    if (typeof h === 'string') res.locals.token = JSON.parse(h) as RequestContext;
    next();
  });
  const mw = distributor({ logger: memoryLogger(), ...options } as DistributorOptions);
  app.use(extra?.mount ?? '/', mw);
  const echo = extra?.handler ?? (async (req: Request, res: Response) => {
    const d = res.locals.distribution;
    const status = Number(req.headers['x-echo-status'] ?? 200);
    // `x-echo-report`: the status is the upstream's, reported the way a relay does (fail())
    if (req.headers['x-echo-report'] !== undefined && status >= 400 && d?.selected) await d.fail({ status });
    res.status(status).json({
      channel: res.locals.channel ?? null,
      distribution: d ? JSON.parse(JSON.stringify(d)) : null,
      body: req.body ?? null,
      rawBodyLength: req.rawBody?.length ?? null,
    });
  });
  // A catch-all that reads the same on Express 4 and 5 (no path syntax).
  app.use(echo);
  return { app, mw };
}

/** Sets the auth context header for supertest. */
export const ctx = (c: RequestContext) => ({ 'x-test-context': JSON.stringify(c) });

/**
 * A `createApp` for one test file that remembers every distributor it made and shuts them all
 * down after the file's tests. Call it at the top level of a test file.
 */
export function trackedApps(): (options: Parameters<typeof createApp>[0], extra?: Parameters<typeof createApp>[1]) => TestApp {
  const made: DistributorHandler[] = [];
  afterAll(async () => {
    await Promise.all(made.map((m) => m.shutdown()));
  });
  return (options, extra) => {
    const t = createApp(options, extra);
    made.push(t.mw);
    return t;
  };
}
