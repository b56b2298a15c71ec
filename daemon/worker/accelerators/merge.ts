// One entry per physical device, whichever ways it was found. The same GPU can appear several times:
// - nvidia-smi lists it by UUID, and an NVIDIA CDI spec names it again by index, by UUID and per MIG slice.
//   With nvidia-smi working, its UUIDs are what is advertised (the docker executor's nvidia driver and
//   CUDA_VISIBLE_DEVICES take them), and NVIDIA's CDI names are dropped.
// - Without nvidia-smi, a CDI spec's aliases (nvidia.com/gpu=0 and nvidia.com/gpu=GPU-...) share their device
//   nodes: one name is kept per set of nodes, a non-numeric one (a UUID) rather than an index, which is
//   renumbered when devices are hidden or reordered.
// - An AMD render node that a CDI device covers is advertised by its CDI name: CDI injects just that device,
//   where the render node only gets apptainer's --rocm, which exposes every AMD GPU.
import type { CdiDevice } from './cdi.ts';
import type { DiscoveredGpu } from './types.ts';

const NVIDIA_NODE = /^\/dev\/nvidia\d+$/;
const RENDER_NODE = /^\/dev\/dri\/(renderD\d+)$/;

function isNvidiaCdi(device: CdiDevice): boolean {
  return device.kind.startsWith('nvidia.com/') || device.deviceNodes.some((node) => NVIDIA_NODE.test(node));
}

/** Keeps one device per (kind, set of device nodes); devices without nodes cannot be matched and all stay. */
function collapseAliases(devices: CdiDevice[]): CdiDevice[] {
  const chosen = new Map<string, CdiDevice>();
  const kept: CdiDevice[] = [];
  for (const device of devices) {
    if (device.deviceNodes.length === 0) {
      kept.push(device);
      continue;
    }
    const key = `${device.kind}\0${device.deviceNodes.join('\0')}`;
    const previous = chosen.get(key);
    if (previous === undefined) {
      chosen.set(key, device);
      kept.push(device);
    } else if (/^\d+$/.test(previous.name) && !/^\d+$/.test(device.name)) {
      chosen.set(key, device);
      kept[kept.indexOf(previous)] = device;
    }
  }
  return kept;
}

export function mergeGpus(nvidia: DiscoveredGpu[], amd: DiscoveredGpu[], cdi: CdiDevice[]): DiscoveredGpu[] {
  const cdiKept = collapseAliases(nvidia.length > 0 ? cdi.filter((device) => !isNvidiaCdi(device)) : cdi);
  const coveredRenderNodes = new Set(
    cdiKept.flatMap((device) =>
      device.deviceNodes.map((node) => RENDER_NODE.exec(node)?.[1]).filter((n) => n !== undefined),
    ),
  );
  const amdKept = amd.filter((gpu) => !coveredRenderNodes.has(gpu.id.replace(/^amd:/, '')));
  return [...nvidia, ...amdKept, ...cdiKept.map((device): DiscoveredGpu => ({ id: device.id, vendor: 'cdi' }))];
}
