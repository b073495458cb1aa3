// The decision trace as a response header value (`x-distributor-trace`).

/** The trace header's name. */
export const TRACE_HEADER = 'x-distributor-trace';

/**
 * Joins the trace with ` -> `. Header values must be Latin-1, so anything outside visible ASCII
 * (a rule name in another script) is percent-encoded instead of making `setHeader` throw.
 */
export function traceHeaderValue(trace: readonly string[]): string {
  return trace.join(' -> ').replace(/[^\x20-\x7e]+/g, (s) => encodeURIComponent(s));
}
