// What start() checks on the host before launching apptainer, so a spec that cannot work fails at once with a
// clear, non-retryable error instead of as a container that exits 255.
import { stat } from 'node:fs/promises';
import { ExecutorError, type Mount } from '../types.ts';
import type { ImageRef } from './args.ts';

async function exists(path: string): Promise<{ file: boolean; dir: boolean } | undefined> {
  try {
    const stats = await stat(path);
    return { file: stats.isFile(), dir: stats.isDirectory() };
  } catch {
    return undefined;
  }
}

/** A local image is a SIF (or other image) file or a sandbox directory; registry references are apptainer's. */
export async function checkImage(image: ImageRef): Promise<void> {
  if (image.kind === 'remote') return;
  const found = await exists(image.path);
  if (found === undefined) throw new ExecutorError(`image not found: ${image.path}`, false);
  if (!found.file && !found.dir) {
    throw new ExecutorError(`image ${image.path} is neither a file (SIF) nor a sandbox directory`, false);
  }
}

/** Apptainer refuses a bind whose host path is missing; saying which mount is clearer than its FATAL line. */
export async function checkBindSources(mounts: Mount[]): Promise<void> {
  for (const [i, mount] of mounts.entries()) {
    if (mount.type !== 'bind' || mount.source === undefined) continue;
    if ((await exists(mount.source)) === undefined) {
      throw new ExecutorError(`mounts[${i}]: bind source not found: ${mount.source}`, false);
    }
  }
}
