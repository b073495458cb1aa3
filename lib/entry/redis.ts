// express-channel-distributor/redis: the shared store for several gateway instances (node-redis,
// ioredis, Redis Cluster). A separate entry, so the main one never loads or types a Redis client.
export { RedisStore, RedisStoreUnavailableError } from '../stores/redis';
export type {
  RedisStoreOptions, RedisSendCommand, RedisSendCommandCluster, RedisClusterCommand, RedisCommandClient,
  RedisPubSubClient, RedisSubscribeFunction, RedisScanNode, RedisMessageListener,
} from '../stores/redis';
