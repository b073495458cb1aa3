// Key choice for multi-key channels ('random' or 'polling'); polling state is per instance.
import type { RegisteredChannel } from './registry';

export class NoEnabledKeyError extends Error {
  constructor(channelId: number) {
    super(`channel ${channelId} has no enabled key`);
    this.name = 'NoEnabledKeyError';
  }
}

/** Picks one enabled key; a channel without keys gets `{ key: undefined, index: undefined }`. */
export class KeyPicker {
  private polling = new Map<number, number>();
  constructor(private readonly random: () => number) {}

  pick(ch: RegisteredChannel): { key?: string; index?: number } {
    const n = ch.keys.length;
    if (n === 0) return {};
    if (n === 1 && ch.disabledKeys.size === 0) return { key: ch.keys[0], index: 0 };
    const enabled: number[] = [];
    for (let i = 0; i < n; i++) if (!ch.disabledKeys.has(i)) enabled.push(i);
    if (enabled.length === 0) throw new NoEnabledKeyError(ch.id);
    let index: number;
    if (ch.multiKeyMode === 'polling') {
      const start = this.polling.get(ch.id) ?? 0;
      // walk from the saved position to the next enabled key
      let i = start % n;
      while (ch.disabledKeys.has(i)) i = (i + 1) % n;
      index = i;
      this.polling.set(ch.id, (i + 1) % n);
    } else {
      index = enabled[Math.min(enabled.length - 1, Math.floor(this.random() * enabled.length))];
    }
    return { key: ch.keys[index], index };
  }
}
