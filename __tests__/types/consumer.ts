// A strict consumer of the package, never run: `npm run typecheck` compiles it against lib/, and
// __tests__/types.test.ts compiles it against lib/ and against the built declarations (by package
// name, through package.json `exports`). Each `@ts-expect-error -- expect: TEXT` line must be an
// error whose message contains TEXT.
import express, { type NextFunction, type Request, type Response } from 'express';
import { adminRouter, distributorAdmin } from '../../lib/entry/admin';
import { distributor, type Channel, type ChannelHealth, type Distribution, type DistributorHandler, type RetryFailure } from '../../lib';
import { distributorMetrics, mergeHooks } from '../../lib/entry/metrics';
import { createDefaultLogger, redactFormat, VALIDATION_CODES, type ValidationCode } from '../../lib/entry/logging';
import { RedisStore, type RedisSendCommand } from '../../lib/entry/redis';
import { relay, type RelayUpstreamError } from '../../lib/entry/relay';

export function consumer(): DistributorHandler {
  const app = express();
  const mw = distributor({
    channels: [{ id: 1, models: 'gpt-4o', key: 'sk-x' }],
    traceHeader: true,
    validate: { memoryStoreInProduction: false },
    on: mergeHooks({ select: (e) => void e.elapsedMs }),
  });
  app.use('/v1', mw);
  app.post('/v1/chat/completions', async (_req: Request, res: Response, next: NextFunction) => {
    const id: number | undefined = res.locals.channel?.id;
    const key: string | undefined = res.locals.channel?.key;
    const retry: ((failure?: RetryFailure) => Promise<Channel | null>) | undefined = res.locals.distribution?.retry;
    const trace: string[] | undefined = res.locals.distribution?.trace;
    const d: Distribution | undefined = res.locals.distribution;
    // @ts-expect-error -- expect: not assignable to type 'string'
    const wrongId: string | undefined = res.locals.channel?.id;
    // @ts-expect-error -- expect: read-only
    if (res.locals.channel) res.locals.channel.id = 2;
    // @ts-expect-error -- expect: not assignable to type 'number'
    const wrongRetry: number | undefined = res.locals.distribution?.retry;
    void [id, key, retry, trace, d, wrongId, wrongRetry, next];
    const nextChannel = await res.locals.distribution?.retry({ status: 429 });
    res.json({ id: nextChannel?.id ?? null });
  });

  const metrics = distributorMetrics();
  const text: Promise<string> = metrics.registry.metrics();
  const health: ChannelHealth | undefined = distributorAdmin(mw).channelHealth(1);
  app.use('/admin', adminRouter(mw, { guard: (_req, _res, next) => next() }));
  void [text, health];

  // every subpath entry, typed
  const send: RedisSendCommand = async () => null;
  const shared = distributor({ channels: [], store: new RedisStore({ sendCommand: send, failuresBeforeBackoff: 2 }), logger: createDefaultLogger('error') });
  const errors: RelayUpstreamError[] = [];
  app.post('/v1/responses', relay({ forwardHeaders: ['x-trace-id', /^x-my-/], onUpstreamError: (e) => errors.push(e) }));
  const code: ValidationCode = VALIDATION_CODES.memoryStoreInProduction;
  void [shared, code, redactFormat];
  // @ts-expect-error -- expect: 'forwardHeaders'
  relay({ forwardHeader: ['x-a'] });
  // @ts-expect-error -- expect: 'failuresBeforeBackof'
  new RedisStore({ sendCommand: send, failuresBeforeBackof: 2 });

  // @ts-expect-error -- expect: 'retyr'
  distributor({ channels: [], retyr: {} });
  // @ts-expect-error -- expect: 'tiems'
  distributor({ channels: [], retry: { tiems: 2 } });
  // @ts-expect-error -- expect: not assignable to type 'boolean
  distributor({ channels: [], traceHeader: 'yes' });
  // @ts-expect-error -- expect: 'memoryStore'
  distributor({ channels: [], validate: { memoryStore: false } });
  // @ts-expect-error -- expect: 'channels'
  distributor({});
  // @ts-expect-error -- expect: 'guard'
  adminRouter(mw, {});
  return mw;
}
