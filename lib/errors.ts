// Typed errors with a code and an HTTP status, and the OpenAI-shaped error body.

/** Codes a request can end with, and the statuses they carry. */
export type RequestErrorCode =
  | 'invalid_request'
  | 'request_too_large'
  | 'group_forbidden'
  | 'model_not_allowed'
  | 'model_required'
  | 'invalid_channel_id'
  | 'channel_disabled'
  | 'channel_setup_failed'
  | 'model_not_found'
  | 'channels_saturated';

/** Codes thrown at creation time for misconfiguration. */
export type ConfigErrorCode = 'ERR_DIST_INVALID_CHANNEL' | 'ERR_DIST_INVALID_OPTIONS' | 'ERR_DIST_INVALID_STORE' | 'ERR_DIST_MISSING_PEER';

/**
 * Every error the distributor produces. Request errors carry an HTTP `status`; configuration
 * errors (`ERR_DIST_*`) are thrown from constructors and factories.
 */
export class DistributorError extends Error {
  readonly code: RequestErrorCode | ConfigErrorCode;
  readonly status: number;
  /** Seconds a client should wait before trying again (sent as `Retry-After`; `channels_saturated`). */
  readonly retryAfterSeconds?: number;
  constructor(code: RequestErrorCode | ConfigErrorCode, message: string, status = 500, retryAfterSeconds?: number) {
    super(message);
    this.name = 'DistributorError';
    this.code = code;
    this.status = status;
    if (retryAfterSeconds !== undefined) this.retryAfterSeconds = retryAfterSeconds;
    Error.captureStackTrace?.(this, DistributorError);
  }
}

export interface OpenAIErrorBody {
  error: { message: string; type: 'distributor_error'; code: string };
}

export function errorBody(err: DistributorError): OpenAIErrorBody {
  return { error: { message: err.message, type: 'distributor_error', code: err.code } };
}

export const badRequest = (message: string) => new DistributorError('invalid_request', message, 400);
export const configError = (message: string) => new DistributorError('ERR_DIST_INVALID_OPTIONS', message);
