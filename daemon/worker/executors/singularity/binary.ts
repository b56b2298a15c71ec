// Which apptainer (or singularity) binary runs tasks, and whether it answers. Looked up like a shell would, in
// a PATH given explicitly (swarmd's by default), so tests and operators can point at a specific install.
import { execFile } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { basename, delimiter, join } from 'node:path';

export interface RuntimeBinary {
  path: string;
  /** "apptainer version 1.3.4", "singularity-ce version 4.1.0"... */
  version: string;
  /** How variables of its environment reach the container's: APPTAINERENV_ or (SingularityCE) SINGULARITYENV_. */
  envPrefix: string;
}

const CANDIDATES = ['apptainer', 'singularity'];
const VERSION_TIMEOUT_MS = 10_000;

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function search(name: string, searchPath: string): string | undefined {
  for (const dir of searchPath.split(delimiter)) {
    if (dir === '') continue;
    const path = join(dir, name);
    if (executable(path)) return path;
  }
  return undefined;
}

/** The binary's absolute path, or why there is none. */
export function findBinary(binary: string | undefined, searchPath: string): { path: string } | { reason: string } {
  if (binary !== undefined && binary !== '') {
    if (binary.includes('/'))
      return executable(binary) ? { path: binary } : { reason: `${binary} is not an executable file` };
    const path = search(binary, searchPath);
    return path !== undefined ? { path } : { reason: `${binary} not found on PATH (${searchPath})` };
  }
  for (const name of CANDIDATES) {
    const path = search(name, searchPath);
    if (path !== undefined) return { path };
  }
  return { reason: `neither apptainer nor singularity found on PATH (${searchPath})` };
}

/** Runs `<binary> --version`: the binary exists and actually starts (a broken install fails here, not per task). */
export function probeBinary(path: string, env: Record<string, string>): Promise<RuntimeBinary | { reason: string }> {
  return new Promise((resolve) => {
    execFile(path, ['--version'], { env, timeout: VERSION_TIMEOUT_MS }, (error, stdout, stderr) => {
      const version = stdout.trim().split('\n')[0] ?? '';
      if (error !== null || version === '') {
        const detail = (stderr.trim() || error?.message || 'no output').split('\n').at(-1);
        resolve({ reason: `${path} --version failed: ${detail}` });
        return;
      }
      // Apptainer reads both prefixes (SINGULARITYENV_ with a deprecation warning); SingularityCE only its own.
      const singularityCE =
        /^singularity/i.test(version) || (!/apptainer/i.test(version) && basename(path) === 'singularity');
      resolve({ path, version, envPrefix: singularityCE ? 'SINGULARITYENV_' : 'APPTAINERENV_' });
    });
  });
}
