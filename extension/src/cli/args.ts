// Argument parsing for the CLI: every problem is a UsageError (exit 2) or a CliError (exit 1) with one line.

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** A malformed command line: exit code 2. */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, 2);
  }
}

const INTEGER = /^[+-]?\d+$/;

export function parseInteger(flag: string, text: string, min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER): number {
  const trimmed = text.trim();
  if (!INTEGER.test(trimmed)) throw new UsageError(`${flag}: "${text}" is not an integer`);
  const value = Number(trimmed);
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new UsageError(`${flag}: ${text} is out of range (${min}..${max === Number.MAX_SAFE_INTEGER ? '' : max})`);
  }
  return value;
}

export function parseNumber(flag: string, text: string, min: number, max: number): number {
  const value = Number(text.trim());
  if (text.trim() === '' || !Number.isFinite(value)) throw new UsageError(`${flag}: "${text}" is not a number`);
  if (value < min || value > max) throw new UsageError(`${flag}: ${text} is out of range (${min}..${max})`);
  return value;
}

/** "1,2,3" or "1 2 3" → [1, 2, 3]. */
export function parseIntegerList(flag: string, text: string, min = 0): number[] {
  const parts = text.split(/[\s,]+/).filter((p) => p !== '');
  if (parts.length === 0) throw new UsageError(`${flag}: expected a comma-separated list of integers`);
  return parts.map((p) => {
    if (!INTEGER.test(p)) throw new UsageError(`${flag}: "${p}" is not an integer`);
    const value = Number(p);
    if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`${flag}: ${p} must be an integer >= ${min}`);
    return value;
  });
}

/** "START:END" → [start, end]. */
export function parseSpan(flag: string, text: string): [number, number] {
  const match = /^\s*(\d+)\s*:\s*(\d+)\s*$/.exec(text);
  if (!match) throw new UsageError(`${flag}: expected START:END (token indices), got "${text}"`);
  const start = Number(match[1]);
  const end = Number(match[2]);
  if (end <= start) throw new UsageError(`${flag}: END must be greater than START in "${text}"`);
  return [start, end];
}
