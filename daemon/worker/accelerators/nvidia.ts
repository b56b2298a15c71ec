// NVIDIA GPUs from nvidia-smi, without NVML bindings:
//   nvidia-smi --query-gpu=uuid,name,memory.total,index --format=csv,noheader,nounits
// one line per GPU, e.g. "GPU-3673a787-981a-a392-98c6-b9fe0e707bf5, NVIDIA H100 80GB HBM3, 81559, 0" (memory in
// MiB). nvidia-smi's output is not guaranteed stable across versions, so fields are asked for explicitly and
// each line is checked; a line that does not fit is reported and skipped, never guessed at.
//
// No nvidia-smi means no NVIDIA driver: no GPUs and nothing to warn about. An nvidia-smi that fails (driver not
// loaded, "couldn't communicate with the NVIDIA driver") is a node with GPUs it cannot use: that is a warning.
import type { DiscoveredGpu, DiscoveryResult, RunCommand } from './types.ts';

export const NVIDIA_SMI_ARGS = ['--query-gpu=uuid,name,memory.total,index', '--format=csv,noheader,nounits'];

const UUID = /^(GPU|MIG)-[0-9a-fA-F-]+$/;
const MIB = 1024 * 1024;

export function parseNvidiaSmi(stdout: string): DiscoveryResult {
  const gpus: DiscoveredGpu[] = [];
  const warnings: string[] = [];
  for (const raw of stdout.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    const fields = line.split(',').map((field) => field.trim());
    const [uuid = '', name = '', memory = '', index = ''] = fields;
    // "[N/A]" (or "[Not Supported]") memory is unknown, not an error.
    const memoryKnown = /^\d+$/.test(memory);
    if (
      fields.length !== 4 ||
      !UUID.test(uuid) ||
      name === '' ||
      !/^\d+$/.test(index) ||
      !(memoryKnown || /^\[.*\]$/.test(memory))
    ) {
      warnings.push(`nvidia-smi: skipping malformed line "${line}" (want: uuid, name, memory.total MiB, index)`);
      continue;
    }
    const gpu: DiscoveredGpu = { id: uuid, vendor: 'nvidia', model: name, index: Number(index) };
    if (memoryKnown) gpu.memoryBytes = Number(memory) * MIB;
    gpus.push(gpu);
  }
  return { gpus, warnings };
}

function missing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

export async function discoverNvidia(run: RunCommand): Promise<DiscoveryResult> {
  let result: Awaited<ReturnType<RunCommand>>;
  try {
    result = await run('nvidia-smi', NVIDIA_SMI_ARGS);
  } catch (error) {
    if (missing(error)) return { gpus: [], warnings: [] };
    return { gpus: [], warnings: [`nvidia-smi could not be run: ${(error as Error).message}`] };
  }
  if (result.code === 127 && result.stdout.trim() === '') return { gpus: [], warnings: [] };
  if (result.code !== 0) {
    // nvidia-smi prints its own failures ("NVIDIA-SMI has failed because...") on stdout.
    const message = (result.stderr.trim() || result.stdout.trim() || 'no output').split('\n')[0];
    return { gpus: [], warnings: [`nvidia-smi failed (exit ${result.code}): ${message}`] };
  }
  return parseNvidiaSmi(result.stdout);
}
