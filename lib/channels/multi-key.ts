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

  /** The index of the key to use, or -1 for a channel without keys. Throws NoEnabledKeyError. */
  /**
   * The key index for this request: `preferred` (the key a pin recorded) while it exists and is
   * enabled, else one enabled key by `multiKeyMode`; -1 for a channel without keys.
   */
  pick(ch: RegisteredChannel, preferred?: number): number {
    const n = ch.keys.length;
    if (preferred !== undefined && preferred >= 0 && preferred < n && !ch.disabledKeys.has(preferred)) return preferred;
    if (n === 0) return -1;
    if (n === 1 && ch.disabledKeys.size === 0) return 0;
    const enabled: number[] = [];
    for (let i = 0; i < n; i++) if (!ch.disabledKeys.has(i)) enabled.push(i);
    if (enabled.length === 0) throw new NoEnabledKeyError(ch.id);
    if (ch.multiKeyMode === 'polling') {
      const start = this.polling.get(ch.id) ?? 0;
      // walk from the saved position to the next enabled key
      let i = start % n;
      while (ch.disabledKeys.has(i)) i = (i + 1) % n;
      this.polling.set(ch.id, (i + 1) % n);
      return i;
    }
    return enabled[Math.min(enabled.length - 1, Math.floor(this.random() * enabled.length))];
  }
}
