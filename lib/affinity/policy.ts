// The pin policy: what happens to a request's pin when its response is done. One pure function,
// so "when is a pin written, moved or cleared" has one answer, tested over every combination of
// its inputs (__tests__/pin-policy.test.ts).

/** What the request learnt about its pin and its outcome. */
export interface PinFacts {
  /** The response finished with a status < 400 and no failure was reported for the last attempt. */
  success: boolean;
  /** A pin was found for the key. */
  hit: boolean;
  /** The pinned channel was set up and served (or was serving) this request. */
  used: boolean;
  /** The lookup cleared the pin as stale. */
  cleared: boolean;
  /** The pinned channel failed with a retryable status. */
  pinFailed: boolean;
  /** The channel (and, for key-level pins, the key) that served last is the pinned one. */
  servedPinned: boolean;
  /** The pin read was another request's reservation (a first request not yet confirmed). */
  provisional: boolean;
  /** This request wrote a reservation (it was a session's first request). */
  reserved: boolean;
  /** The pinned channel was at its limits: it served nothing this request and keeps its pin. */
  saturated: boolean;
}

export interface PinPolicyOptions {
  switchOnSuccess: boolean;
  clearOnFailure: boolean;
}

/**
 * - `none`: leave the store as it is (no pin wanted, or the lookup already refreshed it)
 * - `clear`: compare-and-delete the pin that pointed to the pinned channel
 * - `write-served`: pin the key to the channel that served
 * - `write-first`: pin the key to the first channel this request set up (the pinned one when the
 *   pin was used); without switchOnSuccess a pin never follows a retry
 * - `release`: compare-and-delete the reservation this request wrote (it failed)
 */
export type PinAction = 'none' | 'clear' | 'write-served' | 'write-first' | 'release';

/** Decides the pin write for a finished (or abandoned) request. Pure. */
export function decidePin(f: PinFacts, o: PinPolicyOptions): PinAction {
  if (!f.success) {
    // A failed request writes nothing: its own reservation goes; a used pin whose channel failed
    // goes too (clearOnFailure).
    if (f.reserved) return 'release';
    return f.pinFailed && o.clearOnFailure ? 'clear' : 'none';
  }
  // A full channel keeps its pin: the session goes back to it (and its cache) when it has room.
  if (f.saturated) return 'none';
  if (o.switchOnSuccess) {
    // A used pin that served was refreshed by the lookup (sliding TTL): nothing to write, unless
    // it was a reservation, which a success confirms as a pin with the rule's TTL.
    if (f.used && f.servedPinned && !f.pinFailed && !f.provisional) return 'none';
    return 'write-served';
  }
  // Without switchOnSuccess an existing pin never moves.
  if (f.pinFailed && o.clearOnFailure && !f.servedPinned) return 'clear';
  // A stale pin that was kept (keepOnChannelDisabled) stays as it is.
  if (f.hit && !f.used && !f.cleared) return 'none';
  if (f.used && !f.pinFailed && !f.provisional) return 'none';
  return 'write-first';
}
