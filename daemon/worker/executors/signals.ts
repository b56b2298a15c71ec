// Signal names and numbers (Linux numbering: tasks run on Linux), shared by the executors, and how an
// exit code of 128+N becomes "killed by signal N".
import { constants } from 'node:os';
import { ExecutorError, type ExitStatus } from './types.ts';

const NUMBERS = constants.signals as Record<string, number>;
const NAMES = new Map<number, string>();
for (const [name, number] of Object.entries(NUMBERS)) {
  // SIGIOT/SIGABRT and SIGPOLL/SIGIO share numbers: keep the first, the usual name.
  if (!NAMES.has(number)) NAMES.set(number, name);
}

export function signalName(number: number): string | undefined {
  return NAMES.get(number);
}

/** "SIGTERM", "TERM", "term" or "15" -> "SIGTERM". Throws an ExecutorError naming `field` for anything else. */
export function normalizeSignal(signal: string, field = 'signal'): string {
  const text = signal.trim().toUpperCase();
  if (/^\d+$/.test(text)) {
    const name = NAMES.get(Number(text));
    if (name) return name;
  } else {
    const name = text.startsWith('SIG') ? text : `SIG${text}`;
    if (name in NUMBERS) return name;
  }
  throw new ExecutorError(`${field}: unknown signal "${signal}"`, false);
}

/** "SIGTERM", "TERM", "term" or "15" -> 15. */
export function signalNumber(signal: string, field = 'signal'): number {
  return NUMBERS[normalizeSignal(signal, field)]!;
}

/**
 * A shell (or the engine) reports a program killed by signal N as 128+N. A program that itself calls
 * exit(130) is indistinguishable from one killed by SIGINT; such codes are reported as the signal, as
 * `docker` and shells do.
 */
export function exitStatusFromCode(code: number): ExitStatus {
  const name = code > 128 ? signalName(code - 128) : undefined;
  return name === undefined ? { exitCode: code } : { exitCode: code, signal: name };
}
