// Tokens unique to one request's write (a session reservation, a limit hold): a random tag per
// process plus a counter, so making one costs no randomness per request.

const processTag = Math.random().toString(36).slice(2, 8);
let counter = 0;

/** `[a-z0-9]` only (safe inside pin values and Redis members). */
export function uniqueToken(): string {
  counter = (counter + 1) % Number.MAX_SAFE_INTEGER;
  return `${processTag}${counter.toString(36)}`;
}
