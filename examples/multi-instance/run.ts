// Two gateway processes on one Redis: a session (same `prompt_cache_key`) stays on one channel
// whichever process serves it. Self-contained; starts both processes, exits by itself.
//
//   REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/multi-instance/run.ts
//
// This script forks itself twice (`--serve NAME`): each child is one gateway process with its
// own Redis clients. The relay is a stub that answers with the channel it was given.
import { fork, type ChildProcess } from 'node:child_process';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { createClient } from 'redis';
import { distributor, type ChannelInput, type DistributorHandler } from '../../lib';
import { RedisStore } from '../../lib/entry/redis';

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

/** Child mode: serve one gateway, report its URL to the parent, stop on 'stop'. */
async function serve(name: string): Promise<void> {
  const gw = await startGateway(name);
  process.send?.({ url: gw.url });
  process.on('message', (m) => {
    if (m === 'stop') void gw.close().then(() => process.exit(0));
  });
}

/** Parent mode: fork two gateway processes and resolve once each has told its URL. */
function spawnGateway(name: string): Promise<{ name: string; url: string; proc: ChildProcess }> {
  const proc = fork(__filename, ['--serve', name], { execArgv: process.execArgv, stdio: 'inherit' });
  return new Promise((resolve, reject) => {
    proc.once('message', (m) => resolve({ name, url: (m as { url: string }).url, proc }));
    proc.once('exit', (code) => reject(new Error(`${name} exited early (${code})`)));
  });
}

async function main(): Promise<void> {
  const gateways = await Promise.all([spawnGateway('gateway-1'), spawnGateway('gateway-2')]);
  console.log(gateways.map((g) => `${g.name}: pid ${g.proc.pid} at ${g.url}`).join('\n'));
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
    await Promise.all(gateways.map((g) => new Promise<void>((resolve) => {
      g.proc.once('exit', () => resolve());
      g.proc.send('stop');
      setTimeout(() => {
        g.proc.kill('SIGKILL');
        resolve();
      }, 5000).unref();
    })));
  }
  process.exitCode = exitCode;
}

const serveAt = process.argv.indexOf('--serve');
(serveAt !== -1 ? serve(process.argv[serveAt + 1] ?? 'gateway') : main()).catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
