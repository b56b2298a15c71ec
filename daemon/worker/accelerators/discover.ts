// Accelerator discovery at worker start: NVIDIA through nvidia-smi, AMD through the device tree, and CDI specs,
// merged so each device is advertised once (merge.ts). Each source fails on its own: a broken nvidia-smi is a
// warning, not a node without its CDI devices.
import { join } from 'node:path';
import { discoverAmd } from './amd.ts';
import { DEFAULT_CDI_DIRS, discoverCdi } from './cdi.ts';
import { mergeGpus } from './merge.ts';
import { discoverNvidia } from './nvidia.ts';
import { runCommand as defaultRunCommand } from './run-command.ts';
import type { DiscoveryResult, RunCommand } from './types.ts';

export interface DiscoverOptions {
  /** How nvidia-smi is run; default: execFile with a timeout. */
  runCommand?: RunCommand;
  /** Root of the device tree (/dev, /sys) and of the default CDI dirs; default "/". */
  root?: string;
  /** CDI spec directories, lowest priority first; default <root>/etc/cdi, <root>/var/run/cdi. */
  cdiDirs?: string[];
}

export async function discoverAccelerators(options: DiscoverOptions = {}): Promise<DiscoveryResult> {
  const root = options.root ?? '/';
  const cdiDirs = options.cdiDirs ?? DEFAULT_CDI_DIRS.map((dir) => join(root, dir));
  const [nvidia, amd, cdi] = await Promise.all([
    discoverNvidia(options.runCommand ?? defaultRunCommand),
    discoverAmd(root),
    discoverCdi(cdiDirs),
  ]);
  return {
    gpus: mergeGpus(nvidia.gpus, amd.gpus, cdi.devices),
    warnings: [...nvidia.warnings, ...amd.warnings, ...cdi.warnings],
  };
}
