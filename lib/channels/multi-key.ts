// Key choice for multi-key channels ('random' or 'polling'); polling state is per instance.
import type { RegisteredChannel } from './registry';

export class NoEnabledKeyError extends Error {
  constructor(channelId: number) {
    super(`channel ${channelId} has no enabled key`);
    this.name = 'NoEnabledKeyError';
  }
}

/** Picks one enabled key of a channel (by index). */
export class KeyPicker {
  private polling = new Map<number, number>();
  constructor(private readonly random: () => number) {}

  /**
   * The key index for this request: `preferred` (the key a pin recorded) while it exists, is
   * enabled and is not skipped (`skip`: a cooling key), else one usable key by `multiKeyMode`; -1
   * for a channel without keys. Throws NoEnabledKeyError when no key is usable.
   */
  pick(ch: RegisteredChannel, preferred?: number, skip?: (k: number) => boolean): number {
    const n = ch.keys.length;
    // the common cases first, without a closure: no key, one key, or a pinned key usable as it is
    if (n === 0) return -1;
    if (n === 1 && ch.disabledKeys.size === 0 && skip === undefined) return 0;
    if (preferred !== undefined && preferred >= 0 && preferred < n && !ch.disabledKeys.has(preferred) && (skip === undefined || !skip(preferred))) return preferred;
    const usable = (i: number) => !ch.disabledKeys.has(i) && (skip === undefined || !skip(i));
    const enabled: number[] = [];
    for (let i = 0; i < n; i++) if (usable(i)) enabled.push(i);
    if (enabled.length === 0) throw new NoEnabledKeyError(ch.id);
    if (ch.multiKeyMode === 'polling') {
      const start = this.polling.get(ch.id) ?? 0;
      // walk from the saved position to the next usable key
      let i = start % n;
      while (!usable(i)) i = (i + 1) % n;
      this.polling.set(ch.id, (i + 1) % n);
      return i;
    }
    return enabled[Math.min(enabled.length - 1, Math.floor(this.random() * enabled.length))];
  }

  /** `first`, then the channel's other usable keys in index order after it (the order limits try them in). */
  candidates(ch: RegisteredChannel, first: number, skip?: (k: number) => boolean): number[] {
    const n = ch.keys.length;
    if (n < 2) return [first];
    const out = [first];
    for (let j = 1; j < n; j++) {
      const i = (first + j) % n;
      if (!ch.disabledKeys.has(i) && (skip === undefined || !skip(i))) out.push(i);
    }
    return out;
  }

  /** Does the channel have a usable key other than `except`? */
  hasOther(ch: RegisteredChannel, except: number, skip?: (k: number) => boolean): boolean {
    for (let i = 0; i < ch.keys.length; i++) {
      if (i !== except && !ch.disabledKeys.has(i) && (skip === undefined || !skip(i))) return true;
    }
    return false;
  }
}
