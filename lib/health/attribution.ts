// What counts against a channel, in one place. A caller must never be able to cool down or
// disable a channel for other callers through anything it controls (its headers, body, body size,
// query, path) or through the gateway's own answers: only failures reported as the upstream's
// (`retry()`, `fail()`, `relay()`) reach these rules, and of those only the upstream's kinds count.
import type { Request } from 'express';
import type { Config } from '../options';
import { errorText } from '../security/redact';
import type { RetryFailure } from '../types';

/**
 * The failure kinds that count against a channel's health: no status (connection
 * refused, timeout), 429, or a 5xx other than 501 and 505 (which say the request asked for
 * something the upstream does not do). Every other 4xx is the caller's and never counts; 401/403
 * may only auto-disable, through `autoDisable`.
 */
export function countsAsFailure(status: number | undefined): boolean {
  if (status === undefined) return true;
  if (status === 429) return true;
  return status >= 500 && status < 600 && status !== 501 && status !== 505;
}

/**
 * What the caller sent that an upstream could echo back in an error message: the raw body (and
 * the parsed body, which undoes JSON escapes such as \u0020), the path and query, and every header
 * value. Lower-cased; built only when an auto-disable keyword matched an upstream message.
 */
export type CallerText = () => string;

/** The lower-cased text of everything a caller sent (see `CallerText`). */
export function callerTextOf(req: Request): string {
  const parts: string[] = [];
  const raw = req.rawBody;
  if (raw && raw.length) parts.push(raw.toString('utf8'));
  const body: unknown = req.body;
  if (typeof body === 'string') parts.push(body);
  else if (body !== null && typeof body === 'object' && !Buffer.isBuffer(body)) {
    try {
      parts.push(JSON.stringify(body));
    } catch {
      /* a cyclic body a user middleware built: the raw text above has to do */
    }
  }
  // the path too: a catch-all route forwards it, and an upstream may quote it back
  const url = req.originalUrl ?? req.url ?? '';
  parts.push(url);
  try {
    parts.push(decodeURIComponent(url.replace(/\+/g, ' ')));
  } catch {
    /* malformed escapes: the raw URL above is what the upstream saw */
  }
  for (const [, v] of Object.entries(req.headers)) {
    if (typeof v === 'string') parts.push(v);
    else if (Array.isArray(v)) parts.push(...v);
  }
  return parts.join('\n').toLowerCase();
}

/**
 * An auto-disable rule matches: a listed status (401/403 only), or a keyword in the upstream's
 * message that does not occur in the caller's own request. An upstream that echoes the caller's
 * input ("Invalid value for reasoning_effort: 'Permission denied'") must not let one caller
 * switch a channel off for everyone.
 */
export function autoDisableMatches(ad: NonNullable<Config['health']['autoDisable']>, failure: RetryFailure, callerText: CallerText): boolean {
  if (failure.status !== undefined && ad.statusCodes.has(failure.status)) return true;
  if (ad.keywords.length === 0 || failure.error === undefined || failure.error === null) return false;
  const text = errorText(failure.error, '').toLowerCase();
  if (!text) return false;
  let sent: string | undefined;
  for (const k of ad.keywords) {
    if (!text.includes(k)) continue;
    sent ??= callerText();
    if (!sent.includes(k)) return true;
  }
  return false;
}

/**
 * Does a status seen only when the response finished (never reported by the relay) count? Only
 * with `health.countUnreported`, and then only 5xx and 429: the status may be the gateway's own.
 */
export function countsUnreported(cfg: Config, status: number): boolean {
  return cfg.health.countUnreported && countsAsFailure(status);
}
