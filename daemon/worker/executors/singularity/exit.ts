// How a finished `apptainer exec/run` is reported. Apptainer exits with its payload's code, 128+N when the
// payload was killed by signal N (the process runtime already reports those as signals), and 255 when it failed
// itself (sylog.Fatalf: image not found, bind refused, pull failed...). A payload that exits 255 of its own
// accord is indistinguishable from that and is reported the same way; its last stderr line then tells.
import type { ExitStatus, LogLine } from '../types.ts';

export const RUNTIME_FAILURE_CODE = 255;

/** The most telling stderr line: apptainer's last FATAL/ERROR line, else the last line on stderr. */
export function failureLine(lines: LogLine[]): string {
  const stderr = lines.filter((line) => line.stream === 'stderr' && line.line.trim() !== '').map((l) => l.line.trim());
  return stderr.findLast((line) => /^(FATAL|ERROR)\b/.test(line)) ?? stderr.at(-1) ?? '(no output on stderr)';
}

export function isRuntimeFailure(status: ExitStatus): boolean {
  return status.exitCode === RUNTIME_FAILURE_CODE && status.signal === undefined && status.runtimeError === undefined;
}

export function runtimeFailure(status: ExitStatus, binaryName: string, lines: LogLine[]): ExitStatus {
  return { ...status, runtimeError: `${binaryName} failed (exit ${status.exitCode}): ${failureLine(lines)}` };
}
