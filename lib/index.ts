// Public exports of express-channel-distributor.
import { distributor } from './distributor';

export { distributor };
export default distributor;
export type { DistributorHandler } from './distributor';
export type { DistributorOptions, ErrorHandler } from './options';
export { ChannelRegistry, normalizeModelName } from './channels/registry';
export type { RegisteredChannel, Tier } from './channels/registry';
export { MemoryStore } from './stores/memory';
export type { MemoryStoreOptions } from './stores/memory';
export type { Store, StoreEvent, HealthSnapshot, CooldownPolicy } from './stores/store';
export { DistributorError, errorBody } from './errors';
export type { OpenAIErrorBody, RequestErrorCode, ConfigErrorCode } from './errors';
export { affinityFromNewApi, defaultAffinityRules } from './affinity/rules';
export type { NewApiAffinitySetting } from './affinity/rules';
export { parseStatusRanges, isRetryable, DEFAULT_RETRY_STATUS } from './retry/status-ranges';
export { redactFormat, createDefaultLogger } from './logging/logger';
export { redactText } from './security/redact';
export { DEFAULT_DISABLE_KEYWORDS } from './options';
export { VALIDATION_CODES } from './validations';
export type { ValidationCode } from './validations';
export { mergeHooks } from './hooks';
export { distributorMetrics } from './metrics';
export type { DistributorMetrics, DistributorMetricsOptions, MetricsRegistry } from './metrics';
export { distributorAdmin, adminRouter } from './admin';
export type { DistributorAdmin, AdminRouterOptions, ClearPinsTarget } from './admin';
export { ChannelStatus } from './types';
export type {
  ChannelInput, Channel, RequestContext, KeySource, AffinityRule, AffinityOptions, RetryOptions,
  HealthOptions, Logger, StaleReason, StopReason, AffinityInfo, Attempt, RetryFailure, Distribution,
  ExtractedRequest, DistributorHooks, ValidationName, ChannelHealth,
} from './types';
export { channelFromNewApi, channelsFromNewApi } from './channels/newapi';
export type { NewApiChannelRow } from './channels/newapi';
export { RedisStore, RedisStoreUnavailableError } from './stores/redis';
export type {
  RedisStoreOptions, RedisSendCommand, RedisSendCommandCluster, RedisClusterCommand, RedisCommandClient,
  RedisPubSubClient, RedisSubscribeFunction, RedisScanNode, RedisMessageListener,
} from './stores/redis';
export { relay } from './relay/relay';
export type { RelayOptions, RelayHandler, RelayHeaders, RelayUpstreamError, RelayErrorCode } from './relay/relay';
