// Moving from new-api: channel rows and the channel_affinity_setting JSON, pasted unchanged, drive
// the distributor. It serves a few requests in-process and prints what was chosen, then exits.
//   npx tsx examples/migration/run.ts
import express from 'express';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { ChannelRegistry, affinityFromNewApi, channelsFromNewApi, distributor, type NewApiChannelRow } from '../../lib';

const rows = JSON.parse(readFileSync(path.join(__dirname, 'channels.json'), 'utf8')) as NewApiChannelRow[];
const setting = readFileSync(path.join(__dirname, 'channel_affinity_setting.json'), 'utf8');

async function main(): Promise<void> {
  const mw = distributor({
    channels: new ChannelRegistry(channelsFromNewApi(rows)),
    affinity: affinityFromNewApi(setting),
    autoGroups: ['vip', 'default'],
  });
  const app = express();
  app.use((req, res, next) => {
    // the auth step of your gateway: the token's group (new-api's "group" / "token_group")
    res.locals.token = { group: String(req.headers['x-group'] ?? 'default'), tokenId: 42 };
    next();
  });
  app.use('/v1', mw);
  // instead of a relay: show what the relay would get (never print res.locals.channel.key)
  app.post(/^\/v1\//, (_req, res) => {
    const ch = res.locals.channel!;
    const d = res.locals.distribution!;
    res.json({ channel: `${ch.id} ${ch.name}`, keyIndex: ch.keyIndex ?? null, group: d.selectedGroup, affinity: d.affinity ?? null });
  });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const post = async (p: string, body: unknown, headers: Record<string, string> = {}) => {
    const r = await fetch(base + p, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
    return `${r.status} ${await r.text()}`;
  };
  console.log('plain gpt-5          ', await post('/v1/chat/completions', { model: 'gpt-5' }));
  console.log('codex session (x3)   ');
  for (let i = 0; i < 3; i++) console.log('  ', await post('/v1/responses', { model: 'gpt-5', prompt_cache_key: 'sess-123' }));
  console.log('claude session (x2)  ');
  for (let i = 0; i < 2; i++) console.log('  ', await post('/v1/messages', { model: 'claude-sonnet-4' }, { 'X-Claude-Code-Session-Id': 'c-1' }));
  console.log('auto group           ', await post('/v1/chat/completions', { model: 'gpt-4o' }, { 'x-group': 'auto' }));
  console.log('retired model        ', await post('/v1/chat/completions', { model: 'gpt-3' }));
  server.close();
  await mw.shutdown();
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
