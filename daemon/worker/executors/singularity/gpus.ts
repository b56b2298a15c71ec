// How a task's allocated accelerators reach an Apptainer container: the flags that bind the devices and the
// environment that tells CUDA which of them to use. Pure, so the mapping is tested on its own.
//
// IDs come from discovery (daemon/worker/accelerators): NVIDIA UUIDs from nvidia-smi, `amd:renderD<N>` render
// nodes, or CDI names (`vendor.com/class=name`). Each kind of ID has its own mechanism:
// - CDI name: `--device NAME` (Apptainer >= 1.5, exec/run only). Only that device's nodes are injected, so this is
//   real isolation; CUDA_VISIBLE_DEVICES is left alone (a CDI name in it would hide the injected GPU).
// - NVIDIA UUID: `--nv` plus CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES. `--nv` binds every /dev/nvidia*, so
//   this is soft isolation: CUDA only uses the allocated GPUs, but a task could open the others.
// - AMD render node: `--rocm`, which binds all of /dev/dri and /dev/kfd; a render node name is no index that
//   ROCR_VISIBLE_DEVICES accepts, so nothing narrows it down: a warning says so (CDI is the way to isolate).
// With no GPU at all, NVIDIA_VISIBLE_DEVICES=void and CUDA_VISIBLE_DEVICES='' keep a CUDA program from finding
// any, whatever the image sets.
import { ExecutorError, type TaskRunSpec } from '../types.ts';

/** `vendor.com/class=name` (CDI spec: kind is a DNS-style vendor prefix, a slash and a class). */
export const CDI_NAME = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?\/[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?=[a-zA-Z0-9_.:-]+$/;

export interface AcceleratorOptions {
  /** Flags for `apptainer exec/run`, e.g. ["--nv"] or ["--device", "nvidia.com/gpu=0"]. */
  flags: string[];
  /** Variables for the container's environment; they override the spec's own. */
  env: Record<string, string>;
  /** What an operator should know (isolation weaker than asked). */
  warnings: string[];
}

export function acceleratorOptions(devices: TaskRunSpec['devices']): AcceleratorOptions {
  const nvidia: string[] = [];
  const amd: string[] = [];
  const cdi: string[] = [];
  devices.forEach((device, i) => {
    for (const id of device.ids) {
      if (CDI_NAME.test(id)) cdi.push(id);
      else if (device.kind === 'gpu' && id.startsWith('amd:')) amd.push(id);
      else if (device.kind === 'gpu' && /^[A-Za-z0-9][A-Za-z0-9_.:-]*$/.test(id)) nvidia.push(id);
      else {
        // The scheduler allocated it, so the task expects it: failing says why; running without it would not.
        throw new ExecutorError(
          `devices[${i}]: cannot expose ${device.kind} "${id}": the singularity runtime exposes GPUs and CDI devices only`,
          false,
        );
      }
    }
  });
  const flags: string[] = [];
  const env: Record<string, string> = {};
  const warnings: string[] = [];
  if (nvidia.length > 0) {
    flags.push('--nv');
    env.CUDA_VISIBLE_DEVICES = nvidia.join(',');
    env.NVIDIA_VISIBLE_DEVICES = nvidia.join(',');
  }
  if (amd.length > 0) {
    flags.push('--rocm');
    warnings.push(
      `--rocm exposes all of the host's AMD GPUs, not only ${amd.join(', ')}; use CDI specs (amd.com/gpu=...) to isolate them`,
    );
  }
  for (const name of cdi) flags.push('--device', name);
  if (nvidia.length === 0 && cdi.length === 0) {
    env.NVIDIA_VISIBLE_DEVICES = 'void';
    env.CUDA_VISIBLE_DEVICES = '';
  }
  return { flags, env, warnings };
}
