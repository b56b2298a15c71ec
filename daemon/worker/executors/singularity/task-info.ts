// What the singularity executor keeps beside the process runtime's record of a task (singularity.json in the
// task's directory): the binary and the container arguments that health-check commands reuse after a swarmd
// restart, when the spec is gone. Mode 0600 like task.json: the arguments name the task's binds and image.
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface SingularityTaskInfo {
  version: 1;
  /** Absolute path of the apptainer binary that started the task. */
  binary: string;
  /** `exec ... IMAGE`: a health-check command is appended to it (see args.ts). */
  execPrefix: string[];
}

const FILE = 'singularity.json';

export async function writeTaskInfo(dir: string, info: SingularityTaskInfo): Promise<void> {
  const tmp = join(dir, `${FILE}.tmp`);
  await writeFile(tmp, `${JSON.stringify(info)}\n`, { mode: 0o600 });
  await rename(tmp, join(dir, FILE));
}

export async function readTaskInfo(dir: string): Promise<SingularityTaskInfo | undefined> {
  try {
    const info = JSON.parse(await readFile(join(dir, FILE), 'utf8')) as SingularityTaskInfo;
    return info.version === 1 && Array.isArray(info.execPrefix) ? info : undefined;
  } catch {
    return undefined;
  }
}
