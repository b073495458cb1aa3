// express-channel-distributor/metrics: Prometheus metrics fed by the hooks (prom-client is an
// optional peer, loaded only when distributorMetrics() is called), and mergeHooks to combine them
// with your own.
export { distributorMetrics } from '../metrics';
export type { DistributorMetrics, DistributorMetricsOptions, MetricsRegistry } from '../metrics';
export { mergeHooks } from '../hooks';
