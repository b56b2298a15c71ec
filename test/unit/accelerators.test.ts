// Accelerator discovery (daemon/worker/accelerators): nvidia-smi output recorded in test/fixtures/nvidia-smi,
// a fake device tree and CDI spec dirs in a temp dir; --node-resource parsing; and the GPU variables the
// process runtime gives a task (process/launch.ts).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { discoverAccelerators } from '../../daemon/worker/accelerators/discover.ts';
import { parseNodeResources } from '../../daemon/worker/accelerators/node-resources.ts';
import { NVIDIA_SMI_ARGS, parseNvidiaSmi } from '../../daemon/worker/accelerators/nvidia.ts';
import type { CommandResult, RunCommand } from '../../daemon/worker/accelerators/types.ts';
import { gpuEnv, taskEnv } from '../../daemon/worker/executors/process/launch.ts';
import type { TaskRunSpec } from '../../daemon/worker/executors/types.ts';
import { runSpec } from '../helpers/fixtures.ts';

const fixtures = resolve(import.meta.dirname, '../fixtures/nvidia-smi');
const recorded = (name: string): string => readFileSync(join(fixtures, name), 'utf8');
const GIB = 1024 * 1024 * 1024;
const MIB = 1024 * 1024;

const temps: string[] = [];
function tempRoot(): string {
  const dir = mkdtempSync(join(tmpdir(), 'swarmd-accel-'));
  temps.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

function write(root: string, path: string, content = ''): void {
  mkdirSync(join(root, path, '..'), { recursive: true });
  writeFileSync(join(root, path), content);
}

/** A RunCommand that answers nvidia-smi with `result`, and records what it was asked. */
function fakeRun(result: CommandResult | 'missing'): RunCommand & { calls: string[][] } {
  const calls: string[][] = [];
  const run = async (command: string, args: string[]): Promise<CommandResult> => {
    calls.push([command, ...args]);
    if (result === 'missing') throw Object.assign(new Error(`spawn ${command} ENOENT`), { code: 'ENOENT' });
    return result;
  };
  return Object.assign(run, { calls });
}

const ok = (stdout: string): CommandResult => ({ code: 0, stdout, stderr: '' });

describe('NVIDIA discovery (nvidia-smi)', () => {
  it('reads a recorded H100 output: UUID, model, memory in bytes, index', async () => {
    const run = fakeRun(ok(recorded('h100.csv')));
    const root = tempRoot();
    const result = await discoverAccelerators({ runCommand: run, root });
    expect(run.calls).toEqual([['nvidia-smi', ...NVIDIA_SMI_ARGS]]);
    expect(NVIDIA_SMI_ARGS).toEqual(['--query-gpu=uuid,name,memory.total,index', '--format=csv,noheader,nounits']);
    expect(result).toEqual({
      gpus: [
        {
          id: 'GPU-3673a787-981a-a392-98c6-b9fe0e707bf5',
          vendor: 'nvidia',
          model: 'NVIDIA H100 80GB HBM3',
          memoryBytes: 81559 * MIB,
          index: 0,
        },
      ],
      warnings: [],
    });
  });

  it('reads a recorded two-GPU A100 output', () => {
    const { gpus, warnings } = parseNvidiaSmi(recorded('a100x2.csv'));
    expect(warnings).toEqual([]);
    expect(gpus.map((g) => [g.id, g.model, g.memoryBytes, g.index])).toEqual([
      ['GPU-5c1e0f4a-8d2b-7e39-a4f6-0b9d3c2e1f87', 'NVIDIA A100-SXM4-40GB', 40 * GIB, 0],
      ['GPU-e21a9b7c-3f64-d805-12ab-6c7d8e9f0a13', 'NVIDIA A100-SXM4-40GB', 40 * GIB, 1],
    ]);
  });

  it('skips malformed lines with a warning naming them, and keeps the good ones', () => {
    const text = `${recorded('h100.csv')}garbage line\n0, GPU-abc, NVIDIA X, 100\nGPU-1234, , 100, 1\nGPU-99, NVIDIA T4, [N/A], 2\n`;
    const { gpus, warnings } = parseNvidiaSmi(text);
    expect(gpus.map((g) => g.id)).toEqual(['GPU-3673a787-981a-a392-98c6-b9fe0e707bf5', 'GPU-99']);
    // Unknown memory is left out, not zero.
    expect(gpus[1]).toEqual({ id: 'GPU-99', vendor: 'nvidia', model: 'NVIDIA T4', index: 2 });
    expect(warnings).toEqual([
      'nvidia-smi: skipping malformed line "garbage line" (want: uuid, name, memory.total MiB, index)',
      'nvidia-smi: skipping malformed line "0, GPU-abc, NVIDIA X, 100" (want: uuid, name, memory.total MiB, index)',
      'nvidia-smi: skipping malformed line "GPU-1234, , 100, 1" (want: uuid, name, memory.total MiB, index)',
    ]);
  });

  it('finds nothing, silently, without nvidia-smi (ENOENT, or 127 from a shell)', async () => {
    const root = tempRoot();
    expect(await discoverAccelerators({ runCommand: fakeRun('missing'), root })).toEqual({ gpus: [], warnings: [] });
    const shell = fakeRun({ code: 127, stdout: '', stderr: 'nvidia-smi: not found' });
    expect(await discoverAccelerators({ runCommand: shell, root })).toEqual({ gpus: [], warnings: [] });
  });

  it('warns when nvidia-smi is there but fails', async () => {
    const message =
      "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest " +
      'NVIDIA driver is installed and running.';
    const run = fakeRun({ code: 9, stdout: `${message}\n\n`, stderr: '' });
    expect(await discoverAccelerators({ runCommand: run, root: tempRoot() })).toEqual({
      gpus: [],
      warnings: [`nvidia-smi failed (exit 9): ${message}`],
    });
  });
});

describe('AMD discovery (device tree)', () => {
  it('finds one GPU per render node when /dev/kfd is there, confirmed and described by sysfs', async () => {
    const root = tempRoot();
    write(root, 'dev/kfd');
    write(root, 'dev/dri/card0');
    write(root, 'dev/dri/renderD128');
    write(root, 'dev/dri/renderD129');
    write(root, 'dev/dri/renderD130');
    write(root, 'sys/class/drm/renderD128/device/vendor', '0x1002\n');
    write(root, 'sys/class/drm/renderD128/device/product_name', 'AMD Instinct MI210\n');
    write(root, 'sys/class/drm/renderD128/device/mem_info_vram_total', `${64 * GIB}\n`);
    // An Intel iGPU's render node is not an AMD GPU.
    write(root, 'sys/class/drm/renderD129/device/vendor', '0x8086\n');
    // No sysfs for renderD130: /dev/kfd is taken as enough.
    const result = await discoverAccelerators({ runCommand: fakeRun('missing'), root });
    expect(result).toEqual({
      gpus: [
        { id: 'amd:renderD128', vendor: 'amd', model: 'AMD Instinct MI210', memoryBytes: 64 * GIB },
        { id: 'amd:renderD130', vendor: 'amd' },
      ],
      warnings: [],
    });
  });

  it('finds none without /dev/kfd (render nodes of other vendors)', async () => {
    const root = tempRoot();
    write(root, 'dev/dri/renderD128');
    expect((await discoverAccelerators({ runCommand: fakeRun('missing'), root })).gpus).toEqual([]);
  });
});

describe('CDI discovery', () => {
  const nvidiaSpec = (devices: { name: string; node: string }[]) =>
    JSON.stringify({
      cdiVersion: '0.5.0',
      kind: 'nvidia.com/gpu',
      devices: [
        ...devices.map((d) => ({ name: d.name, containerEdits: { deviceNodes: [{ path: d.node }] } })),
        { name: 'all', containerEdits: { deviceNodes: devices.map((d) => ({ path: d.node })) } },
      ],
      containerEdits: { env: ['NVIDIA_VISIBLE_DEVICES=void'] },
    });

  it('lists kind=name for each device, skips "all", and keeps one name (the UUID) per device', async () => {
    const root = tempRoot();
    write(
      root,
      'etc/cdi/nvidia.json',
      nvidiaSpec([
        { name: '0', node: '/dev/nvidia0' },
        { name: 'GPU-3673a787-981a-a392-98c6-b9fe0e707bf5', node: '/dev/nvidia0' },
        { name: '1', node: '/dev/nvidia1' },
      ]),
    );
    write(
      root,
      'var/run/cdi/vendor.json',
      JSON.stringify({
        cdiVersion: '0.6.0',
        kind: 'vendor.com/fpga',
        devices: [{ name: 'card0', containerEdits: {} }],
      }),
    );
    const result = await discoverAccelerators({ runCommand: fakeRun('missing'), root });
    expect(result).toEqual({
      gpus: [
        { id: 'nvidia.com/gpu=GPU-3673a787-981a-a392-98c6-b9fe0e707bf5', vendor: 'cdi' },
        { id: 'nvidia.com/gpu=1', vendor: 'cdi' },
        { id: 'vendor.com/fpga=card0', vendor: 'cdi' },
      ],
      warnings: [],
    });
  });

  it('prefers nvidia-smi UUIDs over NVIDIA CDI names for the same GPUs', async () => {
    const root = tempRoot();
    write(root, 'etc/cdi/nvidia.json', nvidiaSpec([{ name: '0', node: '/dev/nvidia0' }]));
    const result = await discoverAccelerators({ runCommand: fakeRun(ok(recorded('h100.csv'))), root });
    expect(result.gpus.map((g) => g.id)).toEqual(['GPU-3673a787-981a-a392-98c6-b9fe0e707bf5']);
    expect(result.warnings).toEqual([]);
  });

  it('advertises an AMD GPU that a CDI spec covers by its CDI name only', async () => {
    const root = tempRoot();
    write(root, 'dev/kfd');
    write(root, 'dev/dri/renderD128');
    write(root, 'dev/dri/renderD129');
    write(
      root,
      'etc/cdi/amd.json',
      JSON.stringify({
        cdiVersion: '0.5.0',
        kind: 'amd.com/gpu',
        devices: [
          { name: '0', containerEdits: { deviceNodes: [{ path: '/dev/dri/renderD128' }, { path: '/dev/kfd' }] } },
        ],
      }),
    );
    const result = await discoverAccelerators({ runCommand: fakeRun('missing'), root });
    expect(result.gpus).toEqual([
      { id: 'amd:renderD129', vendor: 'amd' },
      { id: 'amd.com/gpu=0', vendor: 'cdi' },
    ]);
  });

  it('reports YAML specs, malformed files and devices, and goes on', async () => {
    const root = tempRoot();
    const dirs = [join(root, 'static'), join(root, 'dynamic')];
    write(root, 'static/nvidia.yaml', 'cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n');
    write(root, 'static/broken.json', '{ not json');
    write(root, 'static/nokind.json', JSON.stringify({ cdiVersion: '0.5.0', devices: [] }));
    write(root, 'static/README', 'not a spec, ignored');
    write(
      root,
      'dynamic/x.json',
      JSON.stringify({
        cdiVersion: '0.5.0',
        kind: 'example.com/dev',
        devices: [{ name: 'ok' }, { name: 'bad name!' }],
      }),
    );
    mkdirSync(join(root, 'dynamic/subdir'));
    write(root, 'dynamic/subdir/ignored.json', JSON.stringify({ kind: 'example.com/dev', devices: [{ name: 'sub' }] }));
    const result = await discoverAccelerators({ runCommand: fakeRun('missing'), root, cdiDirs: dirs });
    expect(result.gpus).toEqual([{ id: 'example.com/dev=ok', vendor: 'cdi' }]);
    expect(result.warnings).toHaveLength(4);
    expect(result.warnings[0]).toMatch(/^CDI spec .*static\/broken\.json: not valid JSON/);
    expect(result.warnings[1]).toMatch(/^CDI spec .*static\/nokind\.json: missing or invalid "kind"/);
    expect(result.warnings[2]).toMatch(/^CDI spec .*static\/nvidia\.yaml: YAML is not supported.*--format=json/);
    expect(result.warnings[3]).toMatch(/^CDI spec .*dynamic\/x\.json: devices\[1\] has an invalid name "bad name!"/);
  });

  it('lets a later directory redefine a device, and ignores missing directories', async () => {
    const root = tempRoot();
    const spec = (node: string) =>
      JSON.stringify({
        kind: 'example.com/dev',
        devices: [{ name: 'a', containerEdits: { deviceNodes: [{ path: node }] } }],
      });
    write(root, 'etc/cdi/a.json', spec('/dev/old'));
    write(root, 'var/run/cdi/a.json', spec('/dev/new'));
    const result = await discoverAccelerators({
      runCommand: fakeRun('missing'),
      root,
      cdiDirs: [join(root, 'nope'), join(root, 'etc/cdi'), join(root, 'var/run/cdi')],
    });
    expect(result).toEqual({ gpus: [{ id: 'example.com/dev=a', vendor: 'cdi' }], warnings: [] });
  });
});

describe('--node-resource', () => {
  it('turns counts into anonymous IDs and names into one ID, merged by kind', () => {
    expect(parseNodeResources(['fpga=2', 'ib=mlx5_0', 'ib=mlx5_1', 'fpga=1'])).toEqual([
      { kind: 'fpga', ids: ['fpga-0', 'fpga-1', 'fpga-2'] },
      { kind: 'ib', ids: ['mlx5_0', 'mlx5_1'] },
    ]);
    expect(parseNodeResources(['fpga=xilinx.com/fpga=0'])).toEqual([{ kind: 'fpga', ids: ['xilinx.com/fpga=0'] }]);
    expect(parseNodeResources([])).toEqual([]);
  });

  it('refuses malformed flags, naming the value', () => {
    const cases: [string, RegExp][] = [
      ['fpga', /--node-resource "fpga": want KIND=COUNT or KIND=ID/],
      ['=2', /--node-resource "=2": empty resource name/],
      ['fp ga=2', /--node-resource "fp ga=2": invalid resource name "fp ga"/],
      ['9fpga=2', /invalid resource name "9fpga"/],
      ['fpga=0', /--node-resource "fpga=0": a count must be at least 1/],
      ['fpga=', /--node-resource "fpga=": empty value/],
      ['ib=mlx5 0', /--node-resource "ib=mlx5 0": invalid ID "mlx5 0"/],
      ['fpga=99999999', /at most 4096/],
    ];
    for (const [flag, message] of cases) expect(() => parseNodeResources([flag])).toThrow(message);
    expect(() => parseNodeResources(['ib=mlx5_0', 'ib=mlx5_0'])).toThrow(/"ib=mlx5_0": ib "mlx5_0" is declared twice/);
    expect(() => parseNodeResources(['fpga=fpga-0', 'fpga=1'])).toThrow(/"fpga=1": fpga "fpga-0" is declared twice/);
  });
});

describe('process runtime GPU environment (launch.ts)', () => {
  const spec = (overrides: Partial<TaskRunSpec>): TaskRunSpec =>
    runSpec({
      taskId: 't',
      serviceId: 's',
      serviceName: 's',
      nodeId: 'n',
      command: ['true'],
      stopGracePeriodMs: 0,
      ...overrides,
    });

  it('names the allocated GPUs in CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES, over the spec', () => {
    const ids = ['GPU-5c1e0f4a-8d2b-7e39-a4f6-0b9d3c2e1f87', 'GPU-e21a9b7c-3f64-d805-12ab-6c7d8e9f0a13'];
    const env = taskEnv(
      spec({ env: { CUDA_VISIBLE_DEVICES: '0,1,2,3', FOO: 'bar' }, devices: [{ kind: 'gpu', ids }] }),
      '/work',
    );
    expect(env).toEqual({
      FOO: 'bar',
      CUDA_VISIBLE_DEVICES: ids.join(','),
      NVIDIA_VISIBLE_DEVICES: ids.join(','),
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: '/work',
    });
  });

  it('hides every GPU from a task with none allocated (other kinds of device do not count), over the spec', () => {
    const none = { CUDA_VISIBLE_DEVICES: '', NVIDIA_VISIBLE_DEVICES: 'void' };
    expect(gpuEnv(spec({}))).toEqual(none);
    expect(gpuEnv(spec({ devices: [{ kind: 'fpga', ids: ['fpga-0'] }] }))).toEqual(none);
    expect(taskEnv(spec({ env: { A: '1', CUDA_VISIBLE_DEVICES: '0' } }), '/w')).toEqual({
      A: '1',
      ...none,
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: '/w',
    });
  });
});
