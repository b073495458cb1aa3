// The frozen views of a registered channel that leave the distributor: `res.locals.channel` (with
// the key chosen for the request) and what observers get (hook events: the key index, never the
// key). Cached on the channel and rebuilt when its base view is replaced (a status change).
import type { RegisteredChannel } from './registry';
import type { Channel } from '../types';

function keyViews(ch: RegisteredChannel): NonNullable<RegisteredChannel['keyViews']> {
  let kv = ch.keyViews;
  if (kv === undefined || kv.base !== ch.view) ch.keyViews = kv = { base: ch.view, views: [] };
  return kv;
}

/** `res.locals.channel`: the channel with key `index` (-1: a channel without keys). */
export function viewWithKey(ch: RegisteredChannel, index: number): Channel {
  if (index < 0) return ch.view;
  const kv = keyViews(ch);
  return (kv.views[index] ??= Object.freeze({ ...ch.view, key: ch.keys[index], keyIndex: index }) as Channel);
}

/** What hook events carry: `keyIndex` but never `key`. */
export function observerView(ch: RegisteredChannel, index: number): Channel {
  if (index < 0) return ch.view;
  const kv = keyViews(ch);
  kv.observed ??= [];
  return (kv.observed[index] ??= Object.freeze({ ...ch.view, keyIndex: index }) as Channel);
}
