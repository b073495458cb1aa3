// Two gateway instances on one Redis: a session (same `prompt_cache_key`) stays on one channel
// whichever instance serves it. Self-contained; exits by itself.
//
//   REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/multi-instance/run.ts
//
// Each "gateway" is its own Express app with its own Redis clients, as two processes would be.
// The relay is a stub that answers with the channel it was given (no upstream needed).
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { createClient } from 'redis';
import { distributor, RedisStore, type ChannelInput, type DistributorHandler } from '../../lib';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const PREFIX = 'ecd-example-multi:';

const channels: ChannelInput[] = [
  { id: 1, name: 'openai-a', models: 'gpt-4o', key: 'sk-a' },
  { id: 2, name: 'openai-b', models: 'gpt-4o', key: 'sk-b' },
  { id: 3, name: 'openai-c', models: 'gpt-4o', key: 'sk-c' },
];

interface Gateway {
  name: string;
  url: string;
  close(): Promise<void>;
}

async function startGateway(name: string): Promise<Gateway> {
  // One client for commands and one for pub/sub (a subscribed connection cannot run commands).
  const client = createClient({ url: REDIS_URL });
  client.on('error', (e: Error) => console.error(`[${name}] redis: ${e.message}`)); // required with node-redis
  await client.connect();
  const subscriber = client.duplicate();
  subscriber.on('error', (e: Error) => console.error(`[${name}] redis subscriber: ${e.message}`));
  await subscriber.connect();

  const store = new RedisStore({ client, subscriber, prefix: PREFIX });
  const mw: DistributorHandler = distributor({ channels, store });

  const app = express();
  app.use('/v1', mw);
  app.post('/v1/responses', (_req, res) => {
    const ch = res.locals.channel;
    // A real gateway would forward the request to ch.baseUrl with ch.key here.
    res.json({ gateway: name, channel: ch?.name, affinity: res.locals.distribution?.affinity ?? null });
  });

  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const { port } = server.address() as AddressInfo;
  return {
    name,
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await mw.shutdown();
      // The store never closes clients you own: close them yourself.
      await Promise.all([subscriber.quit(), client.quit()]);
    },
  };
}

async function main(): Promise<void> {
  const gateways = [await startGateway('gateway-1'), await startGateway('gateway-2')];
  const session = `session-${Date.now()}`;
  let exitCode = 0;
  try {
    const served = new Set<string>();
    for (let i = 0; i < 6; i++) {
      const gw = gateways[i % 2];
      const r = await fetch(`${gw.url}/v1/responses`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-4o', prompt_cache_key: session, input: 'hello' }),
      });
      const body = (await r.json()) as { gateway: string; channel: string; affinity: { hit: boolean; used: boolean } | null };
      served.add(body.channel);
      console.log(`request ${i + 1} via ${body.gateway}: channel ${body.channel} (pin ${body.affinity?.used ? 'used' : 'created'})`);
      // The pin is written when the response finishes; give that write a moment before the next
      // request (real traffic from one session is rarely this fast).
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    console.log(served.size === 1
      ? `OK: the session stayed on ${[...served][0]} across both gateways`
      : `UNEXPECTED: the session used ${[...served].join(', ')}`);
    if (served.size !== 1) exitCode = 1;
  } finally {
    await Promise.all(gateways.map((g) => g.close()));
  }
  process.exitCode = exitCode;
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
