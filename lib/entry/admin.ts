// express-channel-distributor/admin: pin and health operations on a running distributor, an
// Express router over them behind your guard, and the registry's lower-level types and helpers.
export { distributorAdmin, adminRouter } from '../admin';
export type { DistributorAdmin, AdminRouterOptions, ClearPinsTarget, AffinityRuleReport } from '../admin';
export { normalizeModelName } from '../channels/registry';
export type { RegisteredChannel, Tier } from '../channels/registry';
export { channelFromNewApi } from '../channels/newapi';
