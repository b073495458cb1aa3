// Selection with setup fallback: pick the next channel, set it up, and on a setup failure move on
// to the next, never the same channel twice; a duplicate pick costs no attempt because tried
// channels are excluded from the pick itself.
import type { Request } from 'express';
import type { RegisteredChannel } from '../channels/registry';
import { callHook } from '../hooks';
import type { Runtime } from '../runtime';
import type { Steps } from '../steps';
import type { Channel } from '../types';
import { nextChannel } from './next';

/** What the loop needs of a request's run (RequestRun). */
export interface SelectingRun {
  readonly rt: Runtime;
  readonly req: Request;
  readonly model: string;
  readonly d: { readonly tried: readonly number[] };
  lastGroup?: string;
  /** The last trySetup found its channel at its limits (that costs no attempt). */
  readonly limitRefused: boolean;
  /** A channel was passed over as full (selection.overflow applies). */
  sawFull: boolean;
  trySetup(ch: RegisteredChannel, group: string): Steps<boolean>;
  note(step: string): void;
  observedChannel(): Channel;
}

/** Up to `attempts` channels over `groups`; true when one was set up (it is the run's current channel). */
export function* selectWithFallback(run: SelectingRun, attempts: number, reason: 'select' | 'fallback' | 'retry' | 'hedge', groups: readonly string[], startTier = 0): Steps<boolean> {
  const { rt } = run;
  for (let n = 0; n < attempts; n++) {
    const next = nextChannel(rt, run.model, run.d.tried, groups, startTier);
    if (next.lastGroup !== undefined) run.lastGroup = next.lastGroup;
    if (next.full) run.sawFull = true;
    if (next.ch === undefined) return false;
    if (yield* run.trySetup(next.ch, next.group as string)) {
      // a first pick that only succeeded after a setup failure (or a stale pin) is a fallback
      const why = reason === 'select' && run.d.tried.length > 1 ? 'fallback' : reason;
      run.note(`${why} ch=${next.ch.id}`);
      if (rt.cfg.on.select) callHook(rt.cfg, 'select', { req: run.req, channel: run.observedChannel(), group: next.group as string, model: run.model, reason: why });
      return true;
    }
    // a channel found at its limits is excluded from here on (tried), so this ends
    if (run.limitRefused) n--;
  }
  return false;
}
