// express-channel-distributor/logging: the default winston logger, the redaction format (use it
// in your own loggers), and the codes of the creation-time validations.
export { redactFormat, createDefaultLogger } from '../logging/logger';
export { redactText } from '../security/redact';
export { VALIDATION_CODES } from '../validations';
export type { ValidationCode } from '../validations';
