// The singularity executor with real processes. The same cases run twice: against a stand-in `apptainer`
// (test/fixtures/apptainer-standin, a bash script that validates the flags and runs the command on the host), and
// against a real apptainer when one is on PATH. Covered: start and logs, exit codes and signals, stop with
// SIGTERM then SIGKILL after the grace period, apptainer's own failure (exit 255), the environment (PORT, GPUs),
// health-check exec, re-attaching after a restart, a missing image and a missing binary.
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SingularityExecutor, type SingularityExecutorOptions } from '../../daemon/worker/executors/singularity.ts';
import {
  ExecutorError,
  type LogLine,
  type Mount,
  type TaskHandle,
  type TaskRunSpec,
} from '../../daemon/worker/executors/types.ts';
import { runSpec } from '../helpers/fixtures.ts';

const STANDIN = resolve(import.meta.dirname, '../fixtures/apptainer-standin');
const isRoot = process.getuid?.() === 0;

function which(name: string): string | undefined {
  try {
    return execFileSync('which', [name], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

const realApptainer = which('apptainer');

async function collect(lines: AsyncIterable<LogLine>): Promise<LogLine[]> {
  const out: LogLine[] = [];
  for await (const line of lines) out.push(line);
  return out;
}

async function until(check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A temp dir that tasks (nobody, when the tests run as root) can reach. */
function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755);
  return dir;
}

interface Setup {
  root: string;
  /** PATH on which the executor finds apptainer (and bash, env...). */
  searchPath: string;
  /** A local image that exists. */
  image: string;
  /** Whether `run` on `image` runs a runscript that echoes "runscript" and its args. */
  runscript: boolean;
  /** Mounts every task needs (the real-apptainer sandbox borrows the host's /usr). */
  baseMounts: Mount[];
  runtimeEnv: Record<string, string>;
}

/** The cases both describes run; `setup` runs in beforeAll. */
function executorCases(setup: () => Setup) {
  let env: Setup;
  const executors: SingularityExecutor[] = [];
  const started: { executor: SingularityExecutor; handle: TaskHandle }[] = [];
  const warnings: string[] = [];
  let executor: SingularityExecutor;
  let counter = 0;

  function newExecutor(options: Partial<SingularityExecutorOptions> = {}): SingularityExecutor {
    const ex = new SingularityExecutor({
      dataDir: join(env.root, 'data'),
      searchPath: env.searchPath,
      runtimeEnv: env.runtimeEnv,
      exitPollMs: 50,
      log: (_level, message) => warnings.push(message),
      ...options,
    });
    executors.push(ex);
    return ex;
  }

  function spec(command: string[], overrides: Partial<TaskRunSpec> = {}): TaskRunSpec {
    counter += 1;
    return runSpec({ taskId: `sing-${counter}`, image: env.image, command, mounts: [...env.baseMounts], ...overrides });
  }

  const sh = (script: string): string[] => ['/bin/sh', '-c', script];

  async function start(s: TaskRunSpec, ex: SingularityExecutor = executor): Promise<TaskHandle> {
    const handle = await ex.start(s);
    started.push({ executor: ex, handle });
    return handle;
  }

  async function output(handle: TaskHandle, ex: SingularityExecutor = executor): Promise<string[]> {
    return (await collect(ex.logs(handle, { follow: false }))).map((l) => l.line);
  }

  async function untilLogged(handle: TaskHandle, text: string): Promise<void> {
    await until(async () => (await output(handle)).includes(text));
  }

  beforeAll(() => {
    env = setup();
    executor = newExecutor();
  });

  afterAll(async () => {
    for (const { executor: ex, handle } of started) {
      await ex.stop(handle, 'SIGKILL', 0).catch(() => {});
      await ex.remove(handle).catch(() => {});
    }
    for (const ex of executors) ex.close();
    rmSync(env.root, { recursive: true, force: true });
  });

  it('is available', async () => {
    expect(await executor.available()).toEqual({ ok: true });
  });

  it('starts a container, logs its stdout and stderr, and passes its exit code through', async () => {
    const handle = await start(spec(sh('echo out1; echo err1 >&2; exit 3')));
    expect(handle.runtime).toBe('singularity');
    expect(await executor.wait(handle)).toEqual({ exitCode: 3 });
    const lines = await collect(executor.logs(handle, { follow: false }));
    expect(lines.map((l) => [l.stream, l.line])).toEqual(
      expect.arrayContaining([
        ['stdout', 'out1'],
        ['stderr', 'err1'],
      ]),
    );
    const inspection = await executor.inspect(handle);
    expect(inspection.running).toBe(false);
    expect(inspection.exitStatus).toEqual({ exitCode: 3 });
  });

  it('runs the image runscript with the args when there is no command', async (context) => {
    if (!env.runscript) context.skip('the image given has no known runscript');
    const handle = await start(spec([], { args: ['a', 'b c'] }));
    expect(await executor.wait(handle)).toEqual({ exitCode: 0 });
    expect(await output(handle)).toContain('runscript a b c');
  });

  it("gives the container only the spec's environment, plus PORT, and no GPU", async () => {
    const handle = await start(spec(['env'], { env: { FOO: 'a,b=c', GREETING: 'hello world' }, hostPort: 40123 }));
    expect(await executor.wait(handle)).toEqual({ exitCode: 0 });
    const lines = await output(handle);
    expect(lines).toEqual(
      expect.arrayContaining(['FOO=a,b=c', 'GREETING=hello world', 'PORT=40123', 'NVIDIA_VISIBLE_DEVICES=void']),
    );
    expect(lines.filter((l) => l.startsWith('CUDA_VISIBLE_DEVICES=') && l !== 'CUDA_VISIBLE_DEVICES=')).toEqual([]);
    // Nothing of swarmd's environment (vitest sets VITEST) nor apptainer's own settings.
    expect(lines.filter((l) => /^(VITEST|APPTAINERENV_|APPTAINER_STANDIN)/.test(l))).toEqual([]);
    expect((await executor.inspect(handle)).address).toBe('127.0.0.1:40123');
  });

  it('tells the container which GPUs were allocated', async () => {
    const ids = ['GPU-3673a787-981a-a392-98c6-b9fe0e707bf5', 'GPU-9f0e1d2c-3b4a-5968-7a6b-5c4d3e2f1a0b'];
    const handle = await start(spec(['env'], { devices: [{ kind: 'gpu', ids }] }));
    expect(await executor.wait(handle)).toEqual({ exitCode: 0 });
    expect(await output(handle)).toEqual(
      expect.arrayContaining([`CUDA_VISIBLE_DEVICES=${ids.join(',')}`, `NVIDIA_VISIBLE_DEVICES=${ids.join(',')}`]),
    );
  });

  it('stops a container that handles SIGTERM within the grace period', async () => {
    const handle = await start(spec(sh("trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done")));
    await untilLogged(handle, 'ready');
    await executor.stop(handle, 'SIGTERM', 60_000);
    expect(await executor.wait(handle)).toEqual({ exitCode: 0 });
    expect(await output(handle)).toContain('bye');
  });

  it('sends SIGTERM, then SIGKILL once the grace period is over', async () => {
    const handle = await start(spec(sh("trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done")));
    await untilLogged(handle, 'ready');
    await executor.stop(handle, 'SIGTERM', 2000);
    expect(await executor.wait(handle)).toEqual({ exitCode: 137, signal: 'SIGKILL' });
    expect(await output(handle)).toContain('got-term');
    expect((await executor.inspect(handle)).running).toBe(false);
  });

  it('reports a payload killed by a signal as 128+N', async () => {
    const handle = await start(spec(sh('kill -USR1 $$; sleep 30')));
    expect(await executor.wait(handle)).toEqual({ exitCode: 138, signal: 'SIGUSR1' });
  });

  it("reports apptainer's own failure (exit 255) as a runtime error with its FATAL line", async () => {
    const handle = await start(spec(['true'], { image: 'docker://swarmd-test.invalid/no-such-image:1' }));
    const status = await executor.wait(handle);
    expect(status.exitCode).toBe(255);
    expect(status.runtimeError).toMatch(/^apptainer failed \(exit 255\): FATAL: .*docker:\/\/swarmd-test\.invalid/);
    expect((await executor.inspect(handle)).exitStatus).toEqual(status);
  });

  it('runs health-check commands in a container of the same image, environment and working dir', async () => {
    const handle = await start(spec(['sleep', '30'], { env: { GREETING: 'hello' }, workdir: '/tmp' }));
    const result = await executor.exec(handle, sh('echo "$GREETING"; pwd; exit 4'), 60_000);
    expect(result.exitCode).toBe(4);
    expect(result.output.split('\n')).toEqual(expect.arrayContaining(['hello', '/tmp']));
    expect((await executor.exec(handle, ['true'], 60_000)).exitCode).toBe(0);
    await executor.stop(handle, 'SIGTERM', 5000);
    await expect(executor.exec(handle, ['true'], 5000)).rejects.toThrow(/not running/);
  });

  it('re-attaches after a restart: a new executor recovers the task, its exit code and its exec', async () => {
    const first = newExecutor();
    const marker = join(env.root, 'shared', 'done');
    const s = spec(sh(`while [ ! -e ${marker} ]; do sleep 0.05; done; echo finishing; exit 7`), {
      nodeId: 'node-restart',
      mounts: [
        ...env.baseMounts,
        { type: 'bind', source: join(env.root, 'shared'), target: join(env.root, 'shared'), readOnly: false },
      ],
    });
    const handle = await start(s, first);
    first.close();

    const second = newExecutor();
    const recovered = await second.recover('node-restart');
    expect(recovered).toHaveLength(1);
    expect(recovered[0]!.handle).toEqual(handle);
    expect(recovered[0]!.inspection.running).toBe(true);
    expect((await second.exec(handle, ['true'], 60_000)).exitCode).toBe(0);
    writeFileSync(marker, '');
    expect(await second.wait(handle)).toEqual({ exitCode: 7 });
    expect(await output(handle, second)).toContain('finishing');
  });

  it('refuses a missing image before starting anything', async () => {
    const missing = spec(['true'], { image: join(env.root, 'no-such.sif') });
    const error = await executor.start(missing).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ExecutorError);
    expect((error as ExecutorError).retryable).toBe(false);
    expect((error as Error).message).toBe(`image not found: ${join(env.root, 'no-such.sif')}`);
    expect(existsSync(join(env.root, 'data', 'singularity-tasks', 'tasks', missing.taskId))).toBe(false);
    await expect(executor.prepare(missing)).rejects.toThrow(/image not found/);
  });

  it('refuses volumes, naming the mount', async () => {
    const s = spec(['true'], { mounts: [{ type: 'volume', source: 'pgdata', target: '/data', readOnly: false }] });
    await expect(executor.start(s)).rejects.toThrow(/mounts\[0\]: volume "pgdata" at \/data: apptainer has no volumes/);
  });

  it('is unavailable, saying why, when no binary is found', async () => {
    const empty = tempDir('swarmd-no-apptainer-');
    const none = newExecutor({ searchPath: empty });
    expect(await none.available()).toEqual({
      ok: false,
      reason: `neither apptainer nor singularity found on PATH (${empty})`,
    });
    const error = await none.start(spec(['true'])).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ExecutorError);
    expect((error as ExecutorError).retryable).toBe(false);
    expect((error as Error).message).toMatch(/singularity runtime unavailable: neither apptainer nor singularity/);
    const named = newExecutor({ binary: join(empty, 'apptainer') });
    expect((await named.available()).reason).toMatch(/is not an executable file/);
    rmSync(empty, { recursive: true, force: true });
  });

  return {
    spec,
    start,
    output,
    executor: () => executor,
    newExecutor,
    env: () => env,
  };
}

describe('singularity executor (stand-in apptainer script)', () => {
  const cases = executorCases(() => {
    const root = tempDir('swarmd-singularity-');
    const bin = join(root, 'bin');
    mkdirSync(bin, { mode: 0o755 });
    copyFileSync(STANDIN, join(bin, 'apptainer'));
    chmodSync(join(bin, 'apptainer'), 0o755);
    // The stand-in runs an executable image as its runscript.
    const image = join(root, 'app.sif');
    writeFileSync(image, '#!/bin/sh\necho runscript "$@"\n', { mode: 0o755 });
    mkdirSync(join(root, 'shared'), { mode: 0o777 });
    chmodSync(join(root, 'shared'), 0o777);
    const argvLog = join(root, 'argv.log');
    writeFileSync(argvLog, '', { mode: 0o666 });
    chmodSync(argvLog, 0o666);
    return {
      root,
      searchPath: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`,
      image,
      runscript: true,
      baseMounts: [],
      runtimeEnv: { APPTAINER_STANDIN_ARGV_LOG: argvLog },
    };
  });

  const argvLines = (): string[][] =>
    readFileSync(join(cases.env().root, 'argv.log'), 'utf8')
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => line.split('\t'));

  it('passes exactly the flags of the spec, the environment outside the command line', async () => {
    const { root, image } = cases.env();
    const s = cases.spec(['/bin/sh', '-c', 'echo "$SECRET"'], {
      env: { SECRET: 'hunter2' },
      workdir: '/tmp',
      mounts: [{ type: 'bind', source: join(root, 'shared'), target: '/data', readOnly: true }],
      devices: [{ kind: 'gpu', ids: ['GPU-1', 'nvidia.com/gpu=1'] }],
    });
    const handle = await cases.start(s);
    expect(await cases.executor().wait(handle)).toEqual({ exitCode: 0 });
    expect(await cases.output(handle)).toEqual(['hunter2']);
    const argv = argvLines().find((args) => args.includes('echo "$SECRET"'));
    expect(argv).toEqual([
      'exec',
      '--containall',
      '--cleanenv',
      '--userns',
      '--pwd',
      '/tmp',
      '--bind',
      `${join(root, 'shared')}:/data:ro`,
      '--nv',
      '--device',
      'nvidia.com/gpu=1',
      image,
      '/bin/sh',
      '-c',
      'echo "$SECRET"',
    ]);
    expect(argvLines().flat().join(' ')).not.toContain('hunter2');
  });

  it.runIf(isRoot)(
    'binds host directories into the task (root: the stand-in applies them in a mount namespace)',
    async () => {
      const { root } = cases.env();
      const source = join(root, 'bind-src');
      const target = join(root, 'bind-dst');
      mkdirSync(source, { mode: 0o755 });
      mkdirSync(target, { mode: 0o755 });
      writeFileSync(join(source, 'file'), 'from the host\n');
      // Only root can mount: this executor runs its tasks (and so the stand-in) as root.
      const rooted = cases.newExecutor({ allowRoot: true });
      const s = cases.spec(['/bin/sh', '-c', `cat ${target}/file; touch ${target}/new || echo read-only`], {
        mounts: [{ type: 'bind', source, target, readOnly: true }],
      });
      const handle = await cases.start(s, rooted);
      expect(await rooted.wait(handle)).toEqual({ exitCode: 0 });
      expect(await cases.output(handle, rooted)).toEqual(expect.arrayContaining(['from the host', 'read-only']));
      expect(existsSync(join(source, 'new'))).toBe(false);
    },
  );

  it('reports a command missing from the image as apptainer failing', async () => {
    const handle = await cases.start(cases.spec(['no-such-command-xyz']));
    const status = await cases.executor().wait(handle);
    expect(status.runtimeError).toBe(
      'apptainer failed (exit 255): FATAL:   "no-such-command-xyz": executable file not found in $PATH',
    );
  });

  it('refuses a bind whose host path is missing, naming the mount', async () => {
    const s = cases.spec(['true'], {
      mounts: [{ type: 'bind', source: '/no/such/dir', target: '/x', readOnly: false }],
    });
    await expect(cases.executor().start(s)).rejects.toThrow('mounts[0]: bind source not found: /no/such/dir');
  });

  it.runIf(!isRoot)('refuses a task asking for root', async () => {
    const error = await cases
      .executor()
      .start(cases.spec(['true'], { user: 'root' }))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ExecutorError);
    expect((error as ExecutorError).retryable).toBe(false);
    expect((error as Error).message).toMatch(/swarmd is not root/);
  });
});

if (realApptainer === undefined) {
  console.log('singularity executor (real apptainer): skipped, `which apptainer` finds none on this machine');
}

describe.skipIf(realApptainer === undefined)('singularity executor (real apptainer)', () => {
  executorCases(() => {
    const root = tempDir('swarmd-apptainer-');
    mkdirSync(join(root, 'shared'), { mode: 0o777 });
    chmodSync(join(root, 'shared'), 0o777);
    const given = process.env.SWARMD_TEST_APPTAINER_IMAGE;
    if (given !== undefined && given !== '') {
      return {
        root,
        searchPath: process.env.PATH ?? '',
        image: given,
        runscript: false,
        baseMounts: [],
        runtimeEnv: {},
      };
    }
    // No image to pull offline: a sandbox directory that borrows the host's /usr (a merged-/usr host: /bin,
    // /lib... are links into /usr), with a runscript.
    const sandbox = join(root, 'sandbox');
    for (const dir of ['usr', 'etc', 'tmp', 'var/tmp', 'proc', 'sys', 'dev', 'home', 'root', '.singularity.d/env']) {
      mkdirSync(join(sandbox, dir), { recursive: true, mode: 0o755 });
    }
    for (const link of ['bin', 'sbin', 'lib', 'lib64']) symlinkSync(`usr/${link}`, join(sandbox, link));
    writeFileSync(join(sandbox, '.singularity.d/runscript'), '#!/bin/sh\necho runscript "$@"\n', { mode: 0o755 });
    return {
      root,
      searchPath: process.env.PATH ?? '',
      image: sandbox,
      runscript: true,
      baseMounts: [{ type: 'bind', source: '/usr', target: '/usr', readOnly: true }],
      runtimeEnv: {},
    };
  });
});
