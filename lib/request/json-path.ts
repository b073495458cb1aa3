// A gjson-compatible subset of dot paths: `a.b`, `a.0` (array index), `\.` escapes a dot.
// Only own properties are followed, so `__proto__` or `constructor` never reach the prototype.

/** Splits a gjson-style path into segments once (compile time). */
export function compilePath(path: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < path.length; i++) {
    const c = path[i];
    if (c === '\\' && i + 1 < path.length) {
      cur += path[++i];
    } else if (c === '.') {
      out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out;
}

const hasOwn = Object.prototype.hasOwnProperty;

/** Follows compiled segments into a parsed JSON value; undefined when any step is missing. */
export function getPath(root: unknown, segments: readonly string[]): unknown {
  let cur: unknown = root;
  for (const seg of segments) {
    if (cur === null || typeof cur !== 'object') return undefined;
    if (Array.isArray(cur)) {
      if (!/^\d+$/.test(seg)) return undefined;
      cur = cur[Number(seg)];
    } else {
      if (!hasOwn.call(cur, seg)) return undefined;
      cur = (cur as Record<string, unknown>)[seg];
    }
  }
  return cur;
}

/** gjson's text of a value: scalars as text (trimmed), objects and arrays as JSON, missing -> ''. */
export function valueText(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (typeof v === 'string') return v.trim();
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  try {
    return JSON.stringify(v).trim();
  } catch {
    return '';
  }
}

/**
 * Applies a nested path inside a value: a JSON string is parsed as JSON text, an object is used
 * directly; anything else yields undefined.
 */
export function getNested(value: unknown, segments: readonly string[]): unknown {
  let inner: unknown = value;
  if (typeof value === 'string') {
    const t = value.trim();
    if (!(t.startsWith('{') || t.startsWith('['))) return undefined;
    try {
      inner = JSON.parse(t);
    } catch {
      return undefined;
    }
  } else if (value === null || typeof value !== 'object') {
    return undefined;
  }
  return getPath(inner, segments);
}
