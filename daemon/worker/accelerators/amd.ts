// AMD GPUs from the device tree: /dev/kfd (the ROCm compute interface, shared by all AMD GPUs) plus one
// /dev/dri/renderD<N> node per GPU. Cheap and needs no ROCm tools. Render nodes also exist for Intel and NVIDIA
// GPUs, so where sysfs says whose a node is (/sys/class/drm/renderD<N>/device/vendor), only AMD's (0x1002) count;
// where it does not say, /dev/kfd being there is taken as enough. Model and VRAM come from sysfs when the
// amdgpu driver exposes them (product_name, mem_info_vram_total in bytes).
//
// `root` is the filesystem root to look under ("/" on a node; a fake tree in tests).
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { DiscoveredGpu, DiscoveryResult } from './types.ts';

const AMD_VENDOR = '0x1002';

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function readTrimmed(path: string): Promise<string | undefined> {
  try {
    const text = (await readFile(path, 'utf8')).trim();
    return text === '' ? undefined : text;
  } catch {
    return undefined;
  }
}

export async function discoverAmd(root: string): Promise<DiscoveryResult> {
  if (!(await exists(join(root, 'dev/kfd')))) return { gpus: [], warnings: [] };
  let names: string[];
  try {
    names = await readdir(join(root, 'dev/dri'));
  } catch {
    return { gpus: [], warnings: ['/dev/kfd is present but /dev/dri is not: no AMD render nodes to use'] };
  }
  const nodes = names
    .filter((name) => /^renderD\d+$/.test(name))
    .sort((a, b) => Number(a.slice(7)) - Number(b.slice(7)));
  const gpus: DiscoveredGpu[] = [];
  for (const node of nodes) {
    const device = join(root, 'sys/class/drm', node, 'device');
    const vendor = await readTrimmed(join(device, 'vendor'));
    if (vendor !== undefined && vendor.toLowerCase() !== AMD_VENDOR) continue;
    const gpu: DiscoveredGpu = { id: `amd:${node}`, vendor: 'amd' };
    const model = await readTrimmed(join(device, 'product_name'));
    if (model !== undefined) gpu.model = model;
    const vram = await readTrimmed(join(device, 'mem_info_vram_total'));
    if (vram !== undefined && /^\d+$/.test(vram)) gpu.memoryBytes = Number(vram);
    gpus.push(gpu);
  }
  return { gpus, warnings: [] };
}
