// Lua scripts of the RedisStore: every read-then-write is one atomic script. Each script touches
// the keys it declares, all in one hash slot (one pin key, or the `{health}`-tagged keys), so a
// Redis Cluster runs them. Scripts run in RESP2 mode (no redis.setresp), so HGETALL inside Lua
// is a flat array and every reply reaching the client is nil, an integer, a string or an array.
import { createHash } from 'node:crypto';

export interface LuaScript {
  readonly name: string;
  readonly source: string;
  /** SHA1 of `source`, as Redis names it (computed here: no SCRIPT LOAD round trip to learn it). */
  readonly sha: string;
}

function script(name: string, source: string): LuaScript {
  // Leading whitespace removed so re-indenting this file does not change the SHA (rate-limit-redis).
  const normalized = source.replace(/^\s+/gm, '').trim();
  return { name, source: normalized, sha: createHash('sha1').update(normalized).digest('hex') };
}

// Pin values are `<value>:<writeTimeMs>` (the write time is taken when setPin was called, so a
// write that reaches Redis late carries its original time); version 0.1 wrote a bare value (a
// channel id), which reads as a pin with no write time (older than any timed pin).

/** KEYS[1] pin; ARGV[1] ttl ms. The raw pin value (parsed by the client), refreshing its TTL when it exists. */
export const GET_PIN = script('getPin', `
  local v = redis.call('GET', KEYS[1])
  if v then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
  return v
`);

/**
 * KEYS[1] pin; ARGV[1] expected value. Deletes only if the pin still holds that value
 * (`<value>:<time>`, or a 0.1 bare `<value>`); 1 if deleted.
 */
export const CLEAR_PIN = script('clearPin', `
  local v = redis.call('GET', KEYS[1])
  if v and (string.match(v, '^(.*):%d+$') or v) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
  end
  return 0
`);

/**
 * KEYS[1] pin; ARGV[1] value, ARGV[2] write time (epoch ms), ARGV[3] TTL ms ('' for none).
 * Compare-and-set by write time: writes `<value>:<time>` unless the stored pin was written later
 * (a late or retried write never replaces a newer pin; equal times write, so the last of two
 * writes in one millisecond wins). A 0.1 pin (no time) is older than any timed write. 1 if written.
 */
export const SET_PIN = script('setPin', `
  local v = redis.call('GET', KEYS[1])
  if v then
    local t = string.match(v, ':(%d+)$')
    if t and tonumber(t) > tonumber(ARGV[2]) then return 0 end
  end
  if ARGV[3] == '' then
    redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
  end
  return 1
`);

/**
 * KEYS[1] pin; ARGV[1] value, ARGV[2] write time (epoch ms), ARGV[3] TTL ms, ARGV[4] the value it
 * may replace ('' for none). Add-if-absent: writes `<value>:<time>` when the key is empty or holds
 * exactly ARGV[4] (a stale pin being replaced), and returns nil; otherwise returns what the key
 * holds (the value other requests agreed on), unchanged.
 */
export const RESERVE_PIN = script('reservePin', `
  local v = redis.call('GET', KEYS[1])
  if v and (ARGV[4] == '' or (string.match(v, '^(.*):%d+$') or v) ~= ARGV[4]) then return v end
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
  return false
`);

/**
 * KEYS[1] failures hash (id -> "count:since"), KEYS[2] cooldowns hash (id -> until ms).
 * ARGV: id, now, failures, windowMs, until, events channel, cooldown event JSON.
 * Counts a failure in the window that started at the first counted failure; at the threshold
 * the count resets, the cooldown is written and published, and `until` is returned (else nil).
 */
export const RECORD_FAILURE = script('recordFailure', `
  local id = ARGV[1]
  local now = tonumber(ARGV[2])
  local count = 0
  local since = ARGV[2]
  local rec = redis.call('HGET', KEYS[1], id)
  if rec then
    local c, s = string.match(rec, '^(%d+):(%d+)$')
    if c and now - tonumber(s) <= tonumber(ARGV[4]) then
      count = tonumber(c)
      since = s
    end
  end
  count = count + 1
  if count < tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], id, count .. ':' .. since)
    return false
  end
  redis.call('HDEL', KEYS[1], id)
  redis.call('HSET', KEYS[2], id, ARGV[5])
  redis.call('PUBLISH', ARGV[6], ARGV[7])
  return ARGV[5]
`);

/** KEYS[1] failures, KEYS[2] cooldowns; ARGV: id, events channel, event JSON. */
export const CLEAR_COOLDOWN = script('clearCooldown', `
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
`);

/**
 * KEYS[1] statuses hash, KEYS[2] disabled-keys hash.
 * ARGV: id, status op ('set' | 'del' | ''), status value, keys op, keys value ("0,2"),
 * events channel, status event JSON or '', keys event JSON or ''.
 */
export const SET_OVERRIDE = script('setOverride', `
  local id = ARGV[1]
  if ARGV[2] == 'set' then redis.call('HSET', KEYS[1], id, ARGV[3])
  elseif ARGV[2] == 'del' then redis.call('HDEL', KEYS[1], id) end
  if ARGV[4] == 'set' then redis.call('HSET', KEYS[2], id, ARGV[5])
  elseif ARGV[4] == 'del' then redis.call('HDEL', KEYS[2], id) end
  if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
  if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[8]) end
  return 1
`);

/**
 * KEYS[1] cooldowns, KEYS[2] statuses, KEYS[3] disabled keys, KEYS[4] marks. Read-only.
 * Returns four flat field/value arrays (Lua tables, so arrays under RESP2 and RESP3 alike).
 */
export const LOAD_HEALTH = script('loadHealth', `
  local marks = {}
  if KEYS[4] then marks = redis.call('HGETALL', KEYS[4]) end
  return { redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]), marks }
`);

/** KEYS[1] marks hash (`<kind>:<id>:<key>` -> JSON mark); ARGV: field, JSON mark, events channel, event JSON. */
export const SET_MARK = script('setMark', `
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
`);

/**
 * Takes a slot under a channel's limits (lib/stores/slots.ts has the same rules in process).
 * KEYS: three per candidate key of one channel, all hash-tagged by the channel (one slot):
 * concurrency holds (zset lease -> hold end), request times (zset lease -> time), token buckets
 * (hash second -> tokens). ARGV: now, rpm, tpm, maxConcurrency, tokens, lease, hold end, window ms,
 * concurrency retry ms (0 = limit off). Returns {index, usage x 1000} for the first candidate with
 * room (counted), or {-1, ms until one may have room}.
 */
export const ACQUIRE_SLOT = script('acquireSlot', `
  local now = tonumber(ARGV[1])
  local rpm = tonumber(ARGV[2])
  local tpm = tonumber(ARGV[3])
  local maxc = tonumber(ARGV[4])
  local tokens = tonumber(ARGV[5])
  local lease = ARGV[6]
  local holdEnd = tonumber(ARGV[7])
  local W = tonumber(ARGV[8])
  local best = -1
  for i = 1, #KEYS, 3 do
    local c, r, t = KEYS[i], KEYS[i + 1], KEYS[i + 2]
    local wait = 0
    local use = 0
    if maxc > 0 then
      redis.call('ZREMRANGEBYSCORE', c, '-inf', now)
      local n = redis.call('ZCARD', c)
      if n >= maxc then wait = tonumber(ARGV[9]) end
      use = math.max(use, (n + 1) / maxc)
    end
    if rpm > 0 then
      redis.call('ZREMRANGEBYSCORE', r, '-inf', now - W)
      local n = redis.call('ZCARD', r)
      if n >= rpm then
        local o = redis.call('ZRANGE', r, 0, 0, 'WITHSCORES')
        wait = math.max(wait, tonumber(o[2]) + W - now)
      end
      use = math.max(use, (n + 1) / rpm)
    end
    if tpm > 0 then
      local h = redis.call('HGETALL', t)
      local sum = 0
      local oldest = nil
      for j = 1, #h, 2 do
        local sec = tonumber(h[j])
        if (sec + 1) * 1000 + W <= now then
          redis.call('HDEL', t, h[j])
        else
          sum = sum + tonumber(h[j + 1])
          if oldest == nil or sec < oldest then oldest = sec end
        end
      end
      if sum > 0 and sum + tokens > tpm then wait = math.max(wait, (oldest + 1) * 1000 + W - now) end
      use = math.max(use, (sum + tokens) / tpm)
    end
    if wait == 0 then
      if maxc > 0 then
        redis.call('ZADD', c, holdEnd, lease)
        redis.call('PEXPIRE', c, holdEnd - now + W)
      end
      if rpm > 0 then
        redis.call('ZADD', r, now, lease)
        redis.call('PEXPIRE', r, W + 1000)
      end
      if tpm > 0 then
        redis.call('HINCRBY', t, math.floor(now / 1000), tokens)
        redis.call('PEXPIRE', t, W + 2000)
      end
      return { (i - 1) / 3, math.floor(math.min(use, 1) * 1000) }
    end
    if best < 0 or wait < best then best = wait end
  end
  return { -1, math.ceil(best) }
`);

/** KEYS[1] token buckets; ARGV: second, tokens. Corrects a live bucket (never recreates an expired one). */
export const ADD_TOKENS = script('addTokens', `
  if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) end
  return 0
`);
