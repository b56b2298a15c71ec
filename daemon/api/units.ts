// Human-written quantities, parsed the way docker parses its flags, so `--limit-memory 512m`,
// `--limit-cpu 0.5` and `--restart-delay 1m30s` mean here what they mean to docker:
// - sizes follow go-units' RAMInBytes (binary multiples; "512m", "1.5G", "10 MiB", "1024"),
// - CPUs follow docker's NanoCPUs flag (decimal CPUs, exact to 1e-9),
// - durations follow Go's time.ParseDuration ("10s", "1m30s", "500ms"; a bare number other than 0 is refused).

/**
 * A value that could not be parsed. `message` is complete (`invalid memory value "12XB": ...`); `reason` is the
 * part after the colon, for callers that name the value their own way (the CLI names its flag).
 */
export class InvalidValueError extends Error {
  readonly reason: string;
  readonly text: string;

  constructor(what: string, text: string, reason: string) {
    super(`invalid ${what} "${text}": ${reason}`);
    this.name = 'InvalidValueError';
    this.text = text;
    this.reason = reason;
  }
}

const BINARY_UNITS: Record<string, number> = { k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 };
const SIZE_HELP = 'expected a number of bytes with an optional unit b, k, m, g, t or p (e.g. 512m, 1.5g, 10MiB)';

/** "512m" → 536870912. Units are binary and case-insensitive; "b", "kb", "kib" are all accepted, as by docker. */
export function parseBytes(text: string): number {
  const fail = (reason: string): never => {
    throw new InvalidValueError('memory value', text, reason);
  };
  // go-units allows one space between the number and its unit ("10 MB").
  const match = /^(\d+(?:\.\d+)?|\.\d+) ?([a-zA-Z]*)$/.exec(text);
  if (!match) return fail(SIZE_HELP);
  const number = Number(match[1]);
  const suffix = match[2]!.toLowerCase();
  let multiplier = 1;
  if (suffix !== '' && suffix !== 'b') {
    const unit = BINARY_UNITS[suffix[0]!];
    const rest = suffix.slice(1);
    if (unit === undefined || !['', 'b', 'ib'].includes(rest)) return fail(`unknown unit "${match[2]}"; ${SIZE_HELP}`);
    multiplier = unit;
  }
  // go-units truncates a fractional byte count ("1.5b" is 1 byte).
  const bytes = Math.trunc(number * multiplier);
  if (!Number.isSafeInteger(bytes)) return fail('too large');
  return bytes;
}

/** "0.5" → 500_000_000 nanoCPUs. At most 9 decimal places: docker refuses anything finer. */
export function parseCpus(text: string): number {
  const match = /^(\d*)(?:\.(\d*))?$/.exec(text);
  if (!match || text === '' || text === '.') {
    throw new InvalidValueError('CPU value', text, 'expected a number of CPUs, e.g. 0.5 or 2');
  }
  const fraction = (match[2] ?? '').replace(/0+$/, '');
  if (fraction.length > 9) {
    throw new InvalidValueError('CPU value', text, 'too precise; the smallest unit is 0.000000001 CPU');
  }
  const nano = Number(match[1] || '0') * 1e9 + Number(fraction.padEnd(9, '0'));
  if (!Number.isSafeInteger(nano)) throw new InvalidValueError('CPU value', text, 'too large');
  return nano;
}

// Go's units, in nanoseconds. Both spellings of micro, as Go accepts.
const DURATION_UNITS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  µs: 1e3,
  μs: 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};
const DURATION_HELP = 'expected a duration such as 10s, 1m30s or 500ms (units: ns, us, ms, s, m, h)';

/** "1m30s" → 90000 (milliseconds, rounded to the nearest one). Negative durations are refused. */
export function parseDuration(text: string): number {
  const fail = (reason: string): never => {
    throw new InvalidValueError('duration', text, reason);
  };
  if (text === '0') return 0; // the only number Go accepts without a unit
  if (text.startsWith('-')) return fail('must not be negative');
  const body = text.startsWith('+') ? text.slice(1) : text;
  if (body === '') return fail(DURATION_HELP);
  let nanos = 0;
  let rest = body;
  while (rest !== '') {
    const match = /^(\d+(?:\.\d*)?|\.\d+)([^\d.]*)/.exec(rest);
    if (!match) return fail(DURATION_HELP);
    const [whole, number, unit] = match as unknown as [string, string, string];
    if (unit === '') return fail(`missing unit after ${number}; ${DURATION_HELP}`);
    const scale = DURATION_UNITS[unit];
    if (scale === undefined) return fail(`unknown unit "${unit}"; ${DURATION_HELP}`);
    nanos += Number(number) * scale;
    rest = rest.slice(whole.length);
  }
  const ms = Math.round(nanos / 1e6);
  if (!Number.isSafeInteger(ms)) return fail('too large');
  return ms;
}
