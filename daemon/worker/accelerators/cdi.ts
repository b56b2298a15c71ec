// Devices declared by Container Device Interface specs (/etc/cdi, then /var/run/cdi: a later directory wins for
// a device both define, as CDI's own registry does). Each device is named `kind=name`, e.g. nvidia.com/gpu=0,
// the name runtimes take (apptainer --device, docker's cdi driver). Only the files of each directory are read,
// not subdirectories, as the spec says.
//
// Specs are JSON or YAML. Only JSON is read: swarmd ships no YAML parser (none is among its dependencies), so a
// YAML spec is reported and skipped; `nvidia-ctk cdi generate --format=json` writes JSON. A malformed file or
// device is reported and skipped; it never stops discovery.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

export const DEFAULT_CDI_DIRS = ['/etc/cdi', '/var/run/cdi'];

/** vendor.com/class: a DNS-style vendor prefix, a slash, a class. */
const KIND = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?\/[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?$/;
const NAME = /^[a-zA-Z0-9]([a-zA-Z0-9_.:-]*[a-zA-Z0-9])?$/;

export interface CdiDevice {
  /** `kind=name`, e.g. nvidia.com/gpu=0. */
  id: string;
  kind: string;
  name: string;
  /** Host paths of the device's nodes (hostPath, else path): how two names for one device are recognised. */
  deviceNodes: string[];
  file: string;
}

interface SpecFile {
  kind?: unknown;
  devices?: unknown;
}

interface SpecDevice {
  name?: unknown;
  containerEdits?: { deviceNodes?: { path?: unknown; hostPath?: unknown }[] };
}

function deviceNodes(device: SpecDevice): string[] {
  const nodes = device.containerEdits?.deviceNodes;
  if (!Array.isArray(nodes)) return [];
  return nodes
    .map((node) => (typeof node?.hostPath === 'string' ? node.hostPath : node?.path))
    .filter((path): path is string => typeof path === 'string')
    .sort();
}

/** The devices of one spec file; problems go to `warnings`. */
export function parseCdiSpec(file: string, text: string, warnings: string[]): CdiDevice[] {
  let spec: SpecFile;
  try {
    spec = JSON.parse(text) as SpecFile;
  } catch (error) {
    warnings.push(`CDI spec ${file}: not valid JSON (${(error as Error).message}); skipped`);
    return [];
  }
  if (typeof spec !== 'object' || spec === null || typeof spec.kind !== 'string' || !KIND.test(spec.kind)) {
    warnings.push(`CDI spec ${file}: missing or invalid "kind" (want vendor.com/class); skipped`);
    return [];
  }
  if (!Array.isArray(spec.devices)) {
    warnings.push(`CDI spec ${file}: "devices" is not a list; skipped`);
    return [];
  }
  const kind = spec.kind;
  const devices: CdiDevice[] = [];
  for (const [i, entry] of (spec.devices as SpecDevice[]).entries()) {
    const name = entry?.name;
    if (typeof name !== 'string' || !NAME.test(name)) {
      warnings.push(`CDI spec ${file}: devices[${i}] has an invalid name ${JSON.stringify(name)}; skipped`);
      continue;
    }
    // "all" is an alias for every device of the kind, not a device to allocate.
    if (name === 'all') continue;
    devices.push({ id: `${kind}=${name}`, kind, name, deviceNodes: deviceNodes(entry), file });
  }
  return devices;
}

export async function discoverCdi(dirs: string[]): Promise<{ devices: CdiDevice[]; warnings: string[] }> {
  const warnings: string[] = [];
  const byId = new Map<string, CdiDevice>();
  for (const dir of dirs) {
    let names: string[];
    try {
      names = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        warnings.push(`CDI spec dir ${dir}: ${(error as Error).message}`);
      }
      continue;
    }
    const inThisDir = new Set<string>();
    for (const name of names.sort()) {
      const file = join(dir, name);
      if (/\.ya?ml$/.test(name)) {
        warnings.push(
          `CDI spec ${file}: YAML is not supported (no YAML parser in swarmd); skipped. ` +
            'Write the spec as JSON (nvidia-ctk cdi generate --format=json)',
        );
        continue;
      }
      if (!name.endsWith('.json')) continue;
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (error) {
        warnings.push(`CDI spec ${file}: ${(error as Error).message}`);
        continue;
      }
      for (const device of parseCdiSpec(file, text, warnings)) {
        if (inThisDir.has(device.id)) {
          warnings.push(
            `CDI spec ${file}: device ${device.id} is also defined in another spec of ${dir}; ignored here`,
          );
          continue;
        }
        inThisDir.add(device.id);
        byId.set(device.id, device);
      }
    }
  }
  return { devices: [...byId.values()], warnings };
}
