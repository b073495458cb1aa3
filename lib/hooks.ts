// Calls a user hook; a throwing hook is logged and never breaks a request.
import type { DistributorHooks } from './types';
import type { Logger } from './types';

export function callHook<K extends keyof DistributorHooks>(
  cfg: { on: DistributorHooks; logger: Logger },
  name: K,
  event: Parameters<NonNullable<DistributorHooks[K]>>[0],
): void {
  const hook = cfg.on[name] as ((e: typeof event) => void) | undefined;
  if (!hook) return;
  try {
    hook(event);
  } catch (e) {
    cfg.logger.warn(`hook "${name}" threw`, { error: e instanceof Error ? e.message : String(e) });
  }
}
