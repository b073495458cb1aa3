// The request pipeline is written once, as generators that `yield` whatever may be a promise
// (a user callback's result, a store call, a body read). `drive()` runs them synchronously for
// as long as every yielded value is ready, and turns into a promise only at the first one that
// is not. With the embedded store and synchronous callbacks a request is distributed without a
// single promise or microtask; with Redis or an async `setup` the same code awaits as before.

/** A pipeline step: yields values or promises, each resumed with the (awaited) value. */
export type Steps<T> = Generator<unknown, T, unknown>;

/** Anything `await` would wait for. */
export function isThenable(v: unknown): v is PromiseLike<unknown> {
  return v !== null && (typeof v === 'object' || typeof v === 'function') && typeof (v as { then?: unknown }).then === 'function';
}

/**
 * Runs `steps` to the end: synchronously while each yielded value is ready (a throw propagates
 * synchronously), else as a promise from the first pending value on. A rejection is thrown into
 * the generator at its `yield`, exactly like a rejected `await`.
 */
export function drive<T>(steps: Steps<T>): T | Promise<T> {
  let r = steps.next();
  while (!r.done) {
    if (isThenable(r.value)) return driveAsync(steps, r.value);
    r = steps.next(r.value);
  }
  return r.value;
}

async function driveAsync<T>(steps: Steps<T>, pending: PromiseLike<unknown>): Promise<T> {
  for (;;) {
    let value: unknown;
    let failed = false;
    try {
      value = await pending;
    } catch (e) {
      failed = true;
      value = e;
    }
    let r = failed ? steps.throw(value) : steps.next(value);
    while (!r.done && !isThenable(r.value)) r = steps.next(r.value);
    if (r.done) return r.value;
    pending = r.value as PromiseLike<unknown>;
  }
}

/** `drive()` with a promise in every case (for callers that await anyway). */
export function driveToPromise<T>(steps: Steps<T>): Promise<T> {
  try {
    const out = drive(steps);
    return out instanceof Promise ? out : Promise.resolve(out);
  } catch (e) {
    return Promise.reject(e);
  }
}
