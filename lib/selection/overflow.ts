// The overflow queue (selection.overflow, API.md 11.4): requests that found every candidate at its
// limits wait here in FIFO order. Only the head looks for a slot: it is woken when this instance
// releases a slot, and otherwise looks again after a short poll (slots freed by other instances, a
// rate window moving on). Bounded by `maxQueued`; a waiter leaves at its deadline or when its
// client goes.

interface Waiter {
  wake?: () => void;
}

/** The longest a head waits before looking again without being woken. */
const POLL_MS = 100;

export class OverflowQueue {
  private waiters: Waiter[] = [];
  private closed = false;

  get length(): number {
    return this.waiters.length;
  }

  /** Joins the tail. */
  join(): Waiter {
    const w: Waiter = {};
    this.waiters.push(w);
    return w;
  }

  /** Leaves the queue (served, timed out or gone); the new head is woken to look. */
  leave(w: Waiter): void {
    const i = this.waiters.indexOf(w);
    if (i < 0) return;
    this.waiters.splice(i, 1);
    if (i === 0) this.notify();
  }

  isHead(w: Waiter): boolean {
    return this.waiters[0] === w;
  }

  /**
   * Waits until woken (a slot was released here, or the waiter became the head), for at most
   * `ms` (capped to the poll interval for the head), or until `signal` aborts.
   */
  wait(w: Waiter, ms: number, signal?: AbortSignal): Promise<void> {
    if (this.closed || ms <= 0 || signal?.aborted) return Promise.resolve();
    const limit = this.isHead(w) ? Math.min(ms, POLL_MS) : ms;
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        signal?.removeEventListener('abort', done);
        w.wake = undefined;
        resolve();
      };
      const t = setTimeout(done, Math.max(1, limit));
      signal?.addEventListener('abort', done);
      w.wake = done;
    });
  }

  /** A slot may be free: the head looks again now. */
  notify(): void {
    this.waiters[0]?.wake?.();
  }

  /** Shutdown: every waiter looks one last time and no one waits again. */
  close(): void {
    this.closed = true;
    for (const w of this.waiters) w.wake?.();
  }
}
