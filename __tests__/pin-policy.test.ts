// The pin policy, table-driven over every combination of its inputs: 6 facts x 2 options = 256
// rows, of which the feasible ones (a used pin was a hit, only a used pin can fail, a cleared pin
// was a stale hit, a served pinned channel was used) are checked against the contract's sentences,
// written here independently of lib/affinity/policy.ts. The HTTP suites (affinity, retry) check
// the same rules end to end.
import { describe, expect, test } from '@jest/globals';
import { decidePin, type PinAction, type PinFacts } from '../lib/affinity/policy';

const FACTS = ['success', 'hit', 'used', 'cleared', 'pinFailed', 'servedPinned'] as const;

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
  return true;
}

/** The contract (affinity section and section 8), sentence by sentence. */
function expected(f: PinFacts, switchOnSuccess: boolean, clearOnFailure: boolean): PinAction {
  // "Nothing is written for a failed request." / "The pin is cleared (clearOnFailure) when the
  // pinned channel fails with a retryable status and no later attempt re-pins it."
  if (!f.success) return clearOnFailure && f.pinFailed ? 'clear' : 'none';
  if (switchOnSuccess) {
    // "the key is pinned to the channel that served (switchOnSuccess) with a sliding TTL": a used
    // pin that served is already slid by the lookup; anything else is written to the server.
    return f.used && f.servedPinned && !f.pinFailed ? 'none' : 'write-served';
  }
  // switchOnSuccess false: an existing pin never moves to another channel.
  if (f.used) {
    if (!f.pinFailed) return 'none'; // served by its pin, refreshed by the lookup
    if (f.servedPinned) return 'write-first'; // the pinned channel itself served in the end
    return clearOnFailure ? 'clear' : 'write-first'; // kept pointing to the pinned channel
  }
  if (f.hit && !f.cleared) return 'none'; // a stale pin kept by keepOnChannelDisabled
  return 'write-first'; // a new pin: the first channel chosen, not the one a retry moved to
}

const rows = [...combinations()].filter((r) => feasible(r.f));

describe('decidePin over every feasible combination', () => {
  test('the table has every feasible row (and only those)', () => {
    expect([...combinations()]).toHaveLength(256);
    expect(rows).toHaveLength(56);
  });

  test.each(rows.map((r) => [JSON.stringify({ ...r.f, switchOnSuccess: r.switchOnSuccess, clearOnFailure: r.clearOnFailure }), r] as const))(
    '%s',
    (_name, r) => {
      expect(decidePin(r.f, r)).toBe(expected(r.f, r.switchOnSuccess, r.clearOnFailure));
    },
  );
});

describe('named rows', () => {
  const base: PinFacts = { success: true, hit: false, used: false, cleared: false, pinFailed: false, servedPinned: false };
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
  test('switchOnSuccess off: a stale pin kept (keepOnChannelDisabled) is not replaced', () => {
    expect(decidePin({ ...base, hit: true }, { ...dflt, switchOnSuccess: false })).toBe('none');
  });
});
