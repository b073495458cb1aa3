// Retryable status ranges in the reference's syntax: "429,500-503" (comma or full-width comma).
import { configError } from '../errors';

/** The reference's default: everything but 2xx, 400, 408, 504 and 524. */
export const DEFAULT_RETRY_STATUS = '100-199,300-399,401-407,409-499,500-503,505-523,525-599';

/** Compiles ranges into a 600-entry lookup table (O(1) per check). */
export function parseStatusRanges(spec: string | ReadonlyArray<number | string>): Uint8Array {
  const table = new Uint8Array(600);
  if (typeof spec !== 'string' && !Array.isArray(spec)) {
    throw configError('retry.statusCodes must be a string like "429,500-503" or an array of statuses and ranges');
  }
  const tokens = typeof spec === 'string' ? spec.split(/[,，]/) : spec.map(String);
  for (const raw of tokens) {
    const t = raw.trim();
    if (!t) continue;
    const m = /^(\d{3})(?:\s*-\s*(\d{3}))?$/.exec(t);
    if (!m) throw configError(`retry.statusCodes: "${t}" is not a status or a range like 500-503`);
    const a = Number(m[1]);
    const b = m[2] ? Number(m[2]) : a;
    if (a < 100 || b > 599 || a > b) throw configError(`retry.statusCodes: "${t}" is outside 100-599`);
    for (let s = a; s <= b; s++) table[s] = 1;
  }
  return table;
}

/** Is a failure retryable? No status (connection error, timeout) is; 504 and 524 never are. */
export function isRetryable(table: Uint8Array, status: number | undefined): boolean {
  if (status === undefined) return true;
  if (!Number.isInteger(status) || status < 100 || status > 599) return true;
  if (status >= 200 && status < 300) return false;
  if (status === 504 || status === 524) return false;
  return table[status] === 1;
}
