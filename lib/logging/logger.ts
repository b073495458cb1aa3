// The default winston logger (level warn, component field) and a redaction format for secrets.
import winston from 'winston';
import { REDACTED, redactText } from '../security/redact';
import type { Logger } from '../types';

const SECRET_KEY = /key|token|secret|authorization|password|cookie/i;
/** Numeric identifiers such as `keyIndex` or `tokenId` are not secrets and stay readable. */
const NUMERIC_ID = /(id|index|count)$/i;

function isSecret(k: string, v: unknown): boolean {
  if (!SECRET_KEY.test(k)) return false;
  if (typeof v === 'number') return !NUMERIC_ID.test(k);
  return typeof v === 'string';
}

function redactValue(v: unknown, depth: number): unknown {
  if (depth > 6 || v === null || typeof v !== 'object') return v;
  // An Error serialises to {} in JSON: keep its name and (redacted) message instead.
  if (v instanceof Error) return { name: v.name, message: redactText(v.message) };
  if (Array.isArray(v)) return v.map((x) => redactValue(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
    out[k] = isSecret(k, val) ? REDACTED : typeof val === 'string' ? redactText(val) : redactValue(val, depth + 1);
  }
  return out;
}

/**
 * A winston format that masks fields named like key/token/secret/authorization/password and
 * bearer or `sk-` tokens in messages. Use it in your own loggers too.
 */
export const redactFormat = winston.format((info) => {
  for (const k of Object.keys(info)) {
    const v = (info as Record<string, unknown>)[k];
    if (k === 'level' || k === 'message') continue;
    if (isSecret(k, v)) (info as Record<string, unknown>)[k] = REDACTED;
    else if (typeof v === 'string') (info as Record<string, unknown>)[k] = redactText(v);
    else if (v && typeof v === 'object') (info as Record<string, unknown>)[k] = redactValue(v, 0);
  }
  if (typeof info.message === 'string') info.message = redactText(info.message);
  return info;
});

/** The logger used when none is injected: winston, level `warn`, JSON lines on stderr. */
export function createDefaultLogger(level = 'warn'): Logger {
  return winston.createLogger({
    level,
    defaultMeta: { component: 'express-channel-distributor' },
    format: winston.format.combine(redactFormat(), winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] })],
  });
}
