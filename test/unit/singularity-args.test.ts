// The apptainer command line built from a TaskRunSpec (singularity/args.ts, gpus.ts), and how exit 255 is
// reported (singularity/exit.ts): pure functions, no apptainer needed.
import { describe, expect, it } from 'vitest';
import { buildCommand, isRootUser, parseImage } from '../../daemon/worker/executors/singularity/args.ts';
import { failureLine, isRuntimeFailure, runtimeFailure } from '../../daemon/worker/executors/singularity/exit.ts';
import { acceleratorOptions } from '../../daemon/worker/executors/singularity/gpus.ts';
import type { ExecutorError, TaskRunSpec } from '../../daemon/worker/executors/types.ts';
import { runSpec } from '../helpers/fixtures.ts';

const spec = (overrides: Partial<TaskRunSpec> = {}): TaskRunSpec => runSpec({ image: '/images/app.sif', ...overrides });

const options = { envPrefix: 'APPTAINERENV_', swarmdIsRoot: false };
const NO_GPU = { APPTAINERENV_NVIDIA_VISIBLE_DEVICES: 'void', APPTAINERENV_CUDA_VISIBLE_DEVICES: '' };

function refusal(fn: () => unknown): ExecutorError {
  try {
    fn();
  } catch (error) {
    return error as ExecutorError;
  }
  throw new Error('expected an ExecutorError');
}

describe('singularity command line', () => {
  it('uses exec with the command, contained, clean, in a user namespace', () => {
    const command = buildCommand(spec({ command: ['python3', '-m', 'http.server'], args: ['8080'] }), options);
    expect(command.args).toEqual([
      'exec',
      '--containall',
      '--cleanenv',
      '--userns',
      '/images/app.sif',
      'python3',
      '-m',
      'http.server',
      '8080',
    ]);
    expect(command.execPrefix).toEqual(['exec', '--containall', '--cleanenv', '--userns', '/images/app.sif']);
    expect(command.env).toEqual(NO_GPU);
    expect(command.warnings).toEqual([]);
  });

  it('uses run (the runscript) when there is no command', () => {
    expect(buildCommand(spec({ args: ['--port', '1'] }), options).args).toEqual([
      'run',
      '--containall',
      '--cleanenv',
      '--userns',
      '/images/app.sif',
      '--port',
      '1',
    ]);
    expect(buildCommand(spec(), options).args.at(-1)).toBe('/images/app.sif');
  });

  it('passes the working dir, binds (read-only too) and tmpfs at /tmp', () => {
    const command = buildCommand(
      spec({
        command: ['sh'],
        workdir: '/work',
        mounts: [
          { type: 'bind', source: '/scratch/job', target: '/work', readOnly: false },
          { type: 'bind', source: '/datasets', target: '/data', readOnly: true },
          { type: 'tmpfs', target: '/tmp', readOnly: false },
        ],
      }),
      options,
    );
    const flags = ['--pwd', '/work', '--bind', '/scratch/job:/work', '--bind', '/datasets:/data:ro'];
    expect(command.args).toEqual(['exec', '--containall', '--cleanenv', '--userns', ...flags, '/images/app.sif', 'sh']);
    // Health checks see the same files and working dir.
    expect(command.execPrefix).toEqual(['exec', '--containall', '--cleanenv', '--userns', ...flags, '/images/app.sif']);
  });

  it('gives the environment as APPTAINERENV_ variables (never on the command line), with PORT', () => {
    const command = buildCommand(
      spec({ command: ['env'], env: { FOO: 'a,b=c', SECRET: 'hunter2' }, hostPort: 40123 }),
      options,
    );
    expect(command.env).toEqual({
      APPTAINERENV_FOO: 'a,b=c',
      APPTAINERENV_SECRET: 'hunter2',
      APPTAINERENV_PORT: '40123',
      ...NO_GPU,
    });
    expect(command.args.join(' ')).not.toMatch(/hunter2|--env/);
    expect(buildCommand(spec({ env: { A: '1' } }), { ...options, envPrefix: 'SINGULARITYENV_' }).env).toMatchObject({
      SINGULARITYENV_A: '1',
    });
    expect(refusal(() => buildCommand(spec({ env: { 'BAD-NAME': '1' } }), options)).message).toMatch(/"BAD-NAME"/);
  });

  it('exposes allocated NVIDIA GPUs with --nv and CUDA/NVIDIA_VISIBLE_DEVICES, overriding the spec', () => {
    const ids = ['GPU-3673a787-981a-a392-98c6-b9fe0e707bf5', 'GPU-11111111-2222-3333-4444-555555555555'];
    const command = buildCommand(
      spec({ command: ['nvidia-smi'], env: { CUDA_VISIBLE_DEVICES: 'all' }, devices: [{ kind: 'gpu', ids }] }),
      options,
    );
    expect(command.args).toEqual([
      'exec',
      '--containall',
      '--cleanenv',
      '--userns',
      '--nv',
      '/images/app.sif',
      'nvidia-smi',
    ]);
    expect(command.env).toEqual({
      APPTAINERENV_CUDA_VISIBLE_DEVICES: ids.join(','),
      APPTAINERENV_NVIDIA_VISIBLE_DEVICES: ids.join(','),
    });
    // A health check gets no devices.
    expect(command.execPrefix).not.toContain('--nv');
  });

  it('passes CDI names with --device and leaves CUDA_VISIBLE_DEVICES alone', () => {
    const command = buildCommand(
      spec({ command: ['true'], devices: [{ kind: 'gpu', ids: ['nvidia.com/gpu=0', 'nvidia.com/gpu=1'] }] }),
      options,
    );
    expect(command.args).toEqual([
      'exec',
      '--containall',
      '--cleanenv',
      '--userns',
      '--device',
      'nvidia.com/gpu=0',
      '--device',
      'nvidia.com/gpu=1',
      '/images/app.sif',
      'true',
    ]);
    expect(command.env).toEqual({});
  });

  it('uses --rocm for AMD render nodes, with a warning that it exposes them all', () => {
    const result = acceleratorOptions([{ kind: 'gpu', ids: ['amd:renderD128'] }]);
    expect(result.flags).toEqual(['--rocm']);
    expect(result.env).toEqual({ NVIDIA_VISIBLE_DEVICES: 'void', CUDA_VISIBLE_DEVICES: '' });
    expect(result.warnings.join()).toMatch(/all of the host's AMD GPUs.*renderD128/);
  });

  it('refuses devices it cannot expose (non-GPU, non-CDI), naming them', () => {
    const error = refusal(() => acceleratorOptions([{ kind: 'fpga', ids: ['fpga-0'] }]));
    expect(error.retryable).toBe(false);
    expect(error.message).toMatch(/devices\[0\].*fpga "fpga-0"/);
    expect(acceleratorOptions([{ kind: 'fpga', ids: ['xilinx.com/fpga=0'] }]).flags).toEqual([
      '--device',
      'xilinx.com/fpga=0',
    ]);
  });

  it('refuses volumes, tmpfs where apptainer cannot mount one, and paths --bind cannot express', () => {
    const volume = refusal(() =>
      buildCommand(
        spec({ mounts: [{ type: 'volume', source: 'pgdata', target: '/var/lib/pg', readOnly: false }] }),
        options,
      ),
    );
    expect(volume.retryable).toBe(false);
    expect(volume.message).toMatch(/mounts\[0\]: volume "pgdata" at \/var\/lib\/pg: apptainer has no volumes/);
    expect(
      refusal(() => buildCommand(spec({ mounts: [{ type: 'tmpfs', target: '/cache', readOnly: false }] }), options))
        .message,
    ).toMatch(/mounts\[0\]: tmpfs at \/cache/);
    expect(
      refusal(() =>
        buildCommand(spec({ mounts: [{ type: 'bind', source: '/a,b', target: '/x', readOnly: false }] }), options),
      ).message,
    ).toMatch(/"\/a,b"/);
    expect(
      refusal(() =>
        buildCommand(spec({ mounts: [{ type: 'bind', source: 'rel', target: '/x', readOnly: false }] }), options),
      ).message,
    ).toMatch(/not an absolute path/);
    expect(refusal(() => buildCommand(spec({ workdir: 'rel' }), options)).message).toMatch(/workdir "rel"/);
  });

  it('refuses root unless swarmd is root', () => {
    for (const user of ['root', '0', '0:0', 'root:wheel']) {
      const error = refusal(() => buildCommand(spec({ user }), options));
      expect(error.retryable).toBe(false);
      expect(error.message).toMatch(/swarmd is not root/);
      expect(() => buildCommand(spec({ user }), { ...options, swarmdIsRoot: true })).not.toThrow();
    }
    expect(isRootUser('1000:0')).toBe(false);
    expect(isRootUser(undefined)).toBe(false);
  });

  it('accepts local paths and registry references, and says what a bare name is', () => {
    expect(parseImage('/images/app.sif')).toEqual({ kind: 'local', path: '/images/app.sif' });
    expect(parseImage('/images/sandbox/')).toEqual({ kind: 'local', path: '/images/sandbox/' });
    for (const ref of ['docker://alpine:3.20', 'oras://ghcr.io/x/y:1', 'library://lolcow']) {
      expect(parseImage(ref)).toEqual({ kind: 'remote', ref });
    }
    expect(refusal(() => parseImage('ubuntu:22.04')).message).toBe(
      'image not found: ubuntu:22.04 (a local image needs an absolute path; for a registry image use docker://ubuntu:22.04)',
    );
    expect(refusal(() => parseImage('instance://web')).message).toMatch(/unsupported image reference/);
    expect(refusal(() => parseImage('')).retryable).toBe(false);
  });
});

describe('singularity exit status', () => {
  const line = (stream: 'stdout' | 'stderr', text: string) => ({ stream, line: text, time: new Date(0).toISOString() });

  it('reports exit 255 as apptainer failing, with its FATAL line', () => {
    const lines = [
      line('stderr', 'FATAL:   could not open image /x.sif: no such file'),
      line('stderr', 'some trailing noise'),
      line('stdout', 'out'),
    ];
    expect(isRuntimeFailure({ exitCode: 255 })).toBe(true);
    expect(runtimeFailure({ exitCode: 255 }, 'apptainer', lines)).toEqual({
      exitCode: 255,
      runtimeError: 'apptainer failed (exit 255): FATAL:   could not open image /x.sif: no such file',
    });
    expect(failureLine([line('stderr', 'a'), line('stderr', 'b')])).toBe('b');
    expect(failureLine([line('stdout', 'a')])).toBe('(no output on stderr)');
  });

  it('leaves payload exit codes and signals alone', () => {
    expect(isRuntimeFailure({ exitCode: 3 })).toBe(false);
    expect(isRuntimeFailure({ exitCode: 137, signal: 'SIGKILL' })).toBe(false);
    expect(isRuntimeFailure({ exitCode: 255, runtimeError: 'already explained' })).toBe(false);
  });
});
