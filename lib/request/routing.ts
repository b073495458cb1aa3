// The caller's routing: using group, body group override, auto groups, and the token checks
// (specific channel id and model limits), in the order docs/channels-and-selection.md gives.
import { DistributorError } from '../errors';
import type { Config } from '../options';
import type { RequestContext } from '../types';
import type { ParsedRequest } from './extract';

export interface Routing {
  ctx: RequestContext;
  /** The using group (may be 'auto'). */
  group: string;
  /** Concrete groups selection walks, in order. */
  groups: string[];
  specificChannelId?: number;
}

/** Routing from the context `options.context` returned (awaited by the caller) and the parsed request. */
export function resolveRouting(cfg: Config, raw: RequestContext | undefined, parsed: ParsedRequest): Routing {
  const ctx: RequestContext = raw && typeof raw === 'object' ? raw : {};
  let specificChannelId: number | undefined;
  if (ctx.specificChannelId !== undefined && ctx.specificChannelId !== null) {
    const id = typeof ctx.specificChannelId === 'string' ? Number(ctx.specificChannelId) : ctx.specificChannelId;
    if (typeof id !== 'number' || !Number.isInteger(id) || id <= 0) throw new DistributorError('invalid_channel_id', 'Invalid channel ID', 400);
    specificChannelId = id;
  }
  let group = typeof ctx.group === 'string' && ctx.group ? ctx.group : 'default';
  // A specific channel ignores the group, so a body group cannot forbid it.
  if (specificChannelId === undefined && cfg.allowBodyGroup && parsed.bodyGroup && parsed.bodyGroup !== group) {
    const usable = cfg.usableGroups ? cfg.usableGroups(ctx.userGroup) : [];
    if (parsed.bodyGroup !== ctx.userGroup && !usable.includes(parsed.bodyGroup)) {
      throw new DistributorError('group_forbidden', `No permission to access group ${parsed.bodyGroup}`, 403);
    }
    group = parsed.bodyGroup;
  }
  if (specificChannelId === undefined && Array.isArray(ctx.modelLimits)) {
    if (ctx.modelLimits.length === 0) throw new DistributorError('model_not_allowed', 'This token has no access to any models', 403);
    if (!ctx.modelLimits.includes(parsed.model)) {
      throw new DistributorError('model_not_allowed', `This token has no access to model ${parsed.model || '(none)'}`, 403);
    }
  }
  let groups: string[];
  if (group === 'auto') {
    const usable = cfg.usableGroups ? new Set(cfg.usableGroups(ctx.userGroup)) : undefined;
    groups = usable ? cfg.autoGroups.filter((g) => usable.has(g)) : cfg.autoGroups;
  } else {
    groups = [group];
  }
  return { ctx, group, groups, specificChannelId };
}
