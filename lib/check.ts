// Option checks shared by every factory (distributor(), relay(), the stores): one helper per rule,
// each told how to refuse (a DistributorError with the factory's code, or a TypeError).

/** Builds the error thrown for an invalid option. */
export type Refuse = (message: string) => Error;

/** A finite number > 0, or `def` when undefined. */
export function positiveNumber(refuse: Refuse, name: string, v: unknown, def: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw refuse(`${name} must be a number > 0`);
  return v;
}

/** A finite number >= 0, or `def` when undefined. */
export function nonNegativeNumber(refuse: Refuse, name: string, v: unknown, def: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw refuse(`${name} must be a number >= 0`);
  return v;
}

/** A safe integer >= `min`, or `def` when undefined. */
export function integerAtLeast(refuse: Refuse, name: string, v: unknown, def: number, min: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw refuse(`${name} must be an integer >= ${min}`);
  return v;
}

/** A boolean, or `def` when undefined. */
export function booleanOption(refuse: Refuse, name: string, v: unknown, def: boolean): boolean {
  if (v === undefined) return def;
  if (typeof v !== 'boolean') throw refuse(`${name} must be a boolean`);
  return v;
}

/** A plain object: not null, not an array, not a Buffer. */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v);
}
