// What accelerator discovery finds on a node. `id` is what a runtime is given to expose exactly that device
// (see daemon/worker/executors): an NVIDIA UUID, `amd:renderD<N>`, or a CDI name `vendor.com/class=name`.
// Shaped like the scheduler's SchedulerGpu (id, model, memoryBytes) so a node can advertise them directly.

export type GpuVendor = 'nvidia' | 'amd' | 'cdi';

export interface DiscoveredGpu {
  id: string;
  vendor: GpuVendor;
  model?: string;
  memoryBytes?: number;
  /** The driver's index (nvidia-smi), where there is one. Never an ID: indices change with visibility. */
  index?: number;
}

export interface DiscoveryResult {
  gpus: DiscoveredGpu[];
  /** Problems an operator should see (a failing nvidia-smi, an unreadable CDI spec); discovery goes on. */
  warnings: string[];
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a program with arguments (no shell). A program that does not exist rejects with an error whose `code` is
 * "ENOENT" (as child_process does), or resolves with code 127 (as a shell would).
 */
export type RunCommand = (command: string, args: string[]) => Promise<CommandResult>;
