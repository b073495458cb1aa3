// express-channel-distributor: the middleware, its channels and the embedded store. Everything
// else has its own entry, so an app loads only what it uses:
//   express-channel-distributor/redis    RedisStore (several gateway instances)
//   express-channel-distributor/relay    relay(), the optional forwarding handler
//   express-channel-distributor/metrics  distributorMetrics(), mergeHooks()
//   express-channel-distributor/admin    distributorAdmin(), adminRouter()
//   express-channel-distributor/logging  redactFormat, createDefaultLogger, VALIDATION_CODES
import { distributor } from './distributor';

export { distributor };
export default distributor;
export type { DistributorHandler } from './distributor';
export type { DistributorOptions, ErrorHandler } from './options';
export { DEFAULT_DISABLE_KEYWORDS } from './options';
export { ChannelRegistry } from './channels/registry';
export { MemoryStore } from './stores/memory';
export type { MemoryStoreOptions } from './stores/memory';
export type { Store, StoreEvent, HealthSnapshot, CooldownPolicy, HealthMark, SlotRequest, SlotReply } from './stores/store';
export { DistributorError, errorBody } from './errors';
export { affinityFromNewApi, defaultAffinityRules } from './affinity/rules';
export type { NewApiAffinitySetting } from './affinity/rules';
export { channelsFromNewApi } from './channels/newapi';
export type { NewApiChannelRow, NewApiImportOptions } from './channels/newapi';
export { ChannelStatus } from './types';
export type {
  ChannelInput, Channel, RequestContext, KeySource, AffinityRule, AffinityOptions, RetryOptions, HealthOptions, Logger,
  StaleReason, StopReason, AffinityInfo, Attempt, RetryFailure, Distribution, ExtractedRequest, DistributorHooks,
  ValidationName, ChannelHealth, ChannelType, ChannelLimits, SelectionOptions, SelectionStrategy, UsageReport,
} from './types';
