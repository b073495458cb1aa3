// The pin policy, table-driven over every combination of its inputs: 9 facts x 2 options = 2,048
// rows, of which the feasible ones (a used pin was a hit, only a used pin can fail, a cleared pin
// was a stale hit, a served pinned channel was used, a reservation read was a hit, a request that
// reserved used no pin, a saturated pin was a hit that was neither used, cleared nor replaced) are checked against the contract's sentences,
// written here independently of lib/affinity/policy.ts. The HTTP suites (affinity, retry) check
// the same rules end to end.
import { describe, expect, test } from '@jest/globals';
import { decidePin, type PinAction, type PinFacts } from '../lib/affinity/policy';

const FACTS = ['success', 'hit', 'used', 'cleared', 'pinFailed', 'servedPinned', 'provisional', 'reserved', 'saturated'] as const;

function* combinations(): Generator<{ f: PinFacts; switchOnSuccess: boolean; clearOnFailure: boolean }> {
  for (let bits = 0; bits < 1 << (FACTS.length + 2); bits++) {
    const f = Object.fromEntries(FACTS.map((k, i) => [k, (bits & (1 << i)) !== 0])) as unknown as PinFacts;
    yield { f, switchOnSuccess: (bits & (1 << FACTS.length)) !== 0, clearOnFailure: (bits & (1 << (FACTS.length + 1))) !== 0 };
  }
}

function feasible(f: PinFacts): boolean {
  if (f.used && !f.hit) return false; // a pin can only be used when it was found
  if (f.pinFailed && !f.used) return false; // "the pinned channel failed" needs the pinned channel
  if (f.cleared && (!f.hit || f.used)) return false; // the lookup clears stale pins only
  if (f.servedPinned && !f.used) return false; // a stale pinned channel is never picked again
  if (f.provisional && !f.hit) return false; // a reservation is something the lookup read
  if (f.reserved && f.used) return false; // a request reserves only when no pin served it
  if (f.reserved && f.hit && !f.cleared) return false; // a stale pin is replaced by the reservation
  if (f.saturated && (!f.hit || f.used || f.cleared || f.reserved)) return false; // a pin found, at its limits, kept
  return true;
}

/** The contract (affinity section and section 8), sentence by sentence. */
function expected(f: PinFacts, switchOnSuccess: boolean, clearOnFailure: boolean): PinAction {
  // "Nothing is written for a failed request." / "The pin is cleared (clearOnFailure) when the
  // pinned channel fails with a retryable status and no later attempt re-pins it."
  // "a failed request deletes its own reservation (compare-and-delete)"
  if (!f.success && f.reserved) return 'release';
  // 11.4: "A pinned channel at its limit serves nothing this request, keeps its pin"
  if (f.saturated) return 'none';
  if (!f.success) return clearOnFailure && f.pinFailed ? 'clear' : 'none';
  if (switchOnSuccess) {
    // "the key is pinned to the channel that served (switchOnSuccess) with a sliding TTL": a used
    // pin that served is already slid by the lookup; anything else is written to the server.
    // "until a success turns it into a pin with the rule's TTL": a reservation used is confirmed
    return f.used && f.servedPinned && !f.pinFailed && !f.provisional ? 'none' : 'write-served';
  }
  // switchOnSuccess false: an existing pin never moves to another channel.
  if (f.used) {
    if (!f.pinFailed) return f.provisional ? 'write-first' : 'none'; // refreshed by the lookup, or a reservation confirmed
    if (f.servedPinned) return 'write-first'; // the pinned channel itself served in the end
    return clearOnFailure ? 'clear' : 'write-first'; // kept pointing to the pinned channel
  }
  if (f.hit && !f.cleared) return 'none'; // a stale pin kept by keepOnChannelDisabled
  return 'write-first'; // a new pin: the first channel chosen, not the one a retry moved to
}

const rows = [...combinations()].filter((r) => feasible(r.f));

describe('decidePin over every feasible combination', () => {
  test('the table has every feasible row (and only those)', () => {
    expect([...combinations()]).toHaveLength(2048);
    expect(rows).toHaveLength(144);
  });

  test.each(rows.map((r) => [JSON.stringify({ ...r.f, switchOnSuccess: r.switchOnSuccess, clearOnFailure: r.clearOnFailure }), r] as const))(
    '%s',
    (_name, r) => {
      expect(decidePin(r.f, r)).toBe(expected(r.f, r.switchOnSuccess, r.clearOnFailure));
    },
  );
});

describe('named rows', () => {
  const base: PinFacts = { success: true, hit: false, used: false, cleared: false, pinFailed: false, servedPinned: false, provisional: false, reserved: false, saturated: false };
  const dflt = { switchOnSuccess: true, clearOnFailure: true };
  test('a miss that succeeds writes a new pin to the channel that served', () => {
    expect(decidePin(base, dflt)).toBe('write-served');
  });
  test('a used pin that served writes nothing (the lookup slid its TTL)', () => {
    expect(decidePin({ ...base, hit: true, used: true, servedPinned: true }, dflt)).toBe('none');
  });
  test('a used pin whose channel failed, then a retry served: the pin moves to the server', () => {
    expect(decidePin({ ...base, hit: true, used: true, pinFailed: true }, dflt)).toBe('write-served');
  });
  test('a used pin whose channel failed, request failed: cleared; with clearOnFailure off: kept', () => {
    const f = { ...base, success: false, hit: true, used: true, pinFailed: true, servedPinned: true };
    expect(decidePin(f, dflt)).toBe('clear');
    expect(decidePin(f, { ...dflt, clearOnFailure: false })).toBe('none');
  });
  test('a non-retryable failure of the pinned channel (the caller\'s 400) keeps the pin', () => {
    expect(decidePin({ ...base, success: false, hit: true, used: true, servedPinned: true }, dflt)).toBe('none');
  });
  test('a stale pin that was cleared, then a success: pinned anew', () => {
    expect(decidePin({ ...base, hit: true, cleared: true }, dflt)).toBe('write-served');
  });
  test('a reservation this request wrote: confirmed on success, released on failure', () => {
    expect(decidePin({ ...base, reserved: true }, dflt)).toBe('write-served');
    expect(decidePin({ ...base, success: false, reserved: true }, dflt)).toBe('release');
  });
  test("another request's reservation used: confirmed by a success, cleared when its channel fails", () => {
    const used = { ...base, hit: true, used: true, servedPinned: true, provisional: true };
    expect(decidePin(used, dflt)).toBe('write-served');
    expect(decidePin({ ...used, success: false, pinFailed: true }, dflt)).toBe('clear');
  });
  test('switchOnSuccess off: a stale pin kept (keepOnChannelDisabled) is not replaced', () => {
    expect(decidePin({ ...base, hit: true }, { ...dflt, switchOnSuccess: false })).toBe('none');
  });
});
