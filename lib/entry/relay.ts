// express-channel-distributor/relay: the optional undici-based relay handler and the helpers a
// relay of your own may want (retryable status ranges).
export { relay } from '../relay/relay';
export type { RelayOptions, RelayHandler, RelayHeaders, RelayUpstreamError, RelayErrorCode } from '../relay/relay';
export { parseStatusRanges, isRetryable, DEFAULT_RETRY_STATUS } from '../retry/status-ranges';
