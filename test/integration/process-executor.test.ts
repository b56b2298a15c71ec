// The process executor with real processes: exit codes, logs, environment, stop with and without a
// cooperative program, exec, re-attach after a (simulated) swarmd restart, users and limits.
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ProcessExecutor, type ProcessExecutorOptions } from '../../daemon/worker/executors/process.ts';
import { ExecutorError, type LogLine, type TaskHandle, type TaskRunSpec } from '../../daemon/worker/executors/types.ts';
import { runSpec } from '../helpers/fixtures.ts';

const stateDir = mkdtempSync(join(tmpdir(), 'swarmd-process-'));
// Tasks may run as nobody (when the tests run as root): they must be able to reach their directories.
chmodSync(stateDir, 0o755);
const isRoot = process.getuid?.() === 0;
const warnings: string[] = [];
const executors: ProcessExecutor[] = [];
const started: { executor: ProcessExecutor; handle: TaskHandle }[] = [];

function newExecutor(options: Partial<ProcessExecutorOptions> = {}): ProcessExecutor {
  const executor = new ProcessExecutor({ stateDir, warn: (m) => warnings.push(m), exitPollMs: 50, ...options });
  executors.push(executor);
  return executor;
}

const executor = newExecutor();
let counter = 0;

function spec(command: string[], overrides: Partial<TaskRunSpec> = {}): TaskRunSpec {
  counter += 1;
  return runSpec({ taskId: `task-${counter}`, image: 'ignored', command, ...overrides });
}

const sh = (script: string): string[] => ['/bin/sh', '-c', script];

async function start(s: TaskRunSpec, ex: ProcessExecutor = executor): Promise<TaskHandle> {
  const handle = await ex.start(s);
  started.push({ executor: ex, handle });
  return handle;
}

async function collect(lines: AsyncIterable<LogLine>): Promise<LogLine[]> {
  const out: LogLine[] = [];
  for await (const line of lines) out.push(line);
  return out;
}

async function until(check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Waits for a line on the task's stdout (e.g. "ready" once a trap is installed). */
async function untilLogged(ex: ProcessExecutor, handle: TaskHandle, text: string): Promise<void> {
  await until(async () => (await collect(ex.logs(handle, { follow: false }))).some((l) => l.line === text));
}

function procStatus(pid: number): Record<string, string> {
  return Object.fromEntries(
    readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .map((line) => [line.split(':')[0], line.slice(line.indexOf(':') + 1).trim()]),
  );
}

const alive = (pid: number): boolean =>
  existsSync(`/proc/${pid}`) && !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));

afterAll(async () => {
  for (const { executor: ex, handle } of started) {
    await ex.stop(handle, 'SIGKILL', 0).catch(() => {});
    await ex.remove(handle).catch(() => {});
  }
  for (const ex of executors) ex.close();
  rmSync(stateDir, { recursive: true, force: true });
});

describe('process executor', () => {
  it('is available on this machine', async () => {
    expect(await executor.available()).toEqual({ ok: true });
  });

  it('starts a program and reports its exit code', async () => {
    const handle = await start(spec(sh('exit 3')));
    expect(handle.runtime).toBe('process');
    expect(await executor.wait(handle)).toEqual({ exitCode: 3 });
    const inspection = await executor.inspect(handle);
    expect(inspection.running).toBe(false);
    expect(inspection.exitStatus).toEqual({ exitCode: 3 });
    expect(inspection.pid).toBeGreaterThan(0);
    expect(Date.parse(inspection.startedAt!)).toBeGreaterThan(Date.now() - 60_000);
  });

  it('logs stdout and stderr lines with their stream and time', async () => {
    const before = Date.now();
    const handle = await start(spec(sh('echo out1; echo err1 >&2; echo out2; printf "no newline"')));
    await executor.wait(handle);
    const lines = await collect(executor.logs(handle, { follow: false }));
    expect(lines.map((l) => [l.stream, l.line])).toEqual(
      expect.arrayContaining([
        ['stdout', 'out1'],
        ['stderr', 'err1'],
        ['stdout', 'out2'],
        ['stdout', 'no newline'],
      ]),
    );
    expect(lines).toHaveLength(4);
    const stdout = lines.filter((l) => l.stream === 'stdout').map((l) => l.line);
    expect(stdout).toEqual(['out1', 'out2', 'no newline']);
    for (const line of lines) {
      const time = Date.parse(line.time);
      expect(time).toBeGreaterThanOrEqual(before - 1000);
      expect(time).toBeLessThanOrEqual(Date.now() + 1000);
    }
    expect((await collect(executor.logs(handle, { follow: false, tail: 1 }))).map((l) => l.line)).toHaveLength(1);
  });

  it("gives the program only the spec's environment, plus PORT, a default PATH/HOME and no GPU", async () => {
    const handle = await start(spec(['env'], { env: { FOO: 'bar baz', EMPTY: '' }, hostPort: 40123 }));
    await executor.wait(handle);
    const env = (await collect(executor.logs(handle, { follow: false }))).map((l) => l.line).sort();
    const work = join(stateDir, 'tasks', handle.taskId, 'work');
    expect(env).toEqual(
      [
        'CUDA_VISIBLE_DEVICES=',
        'EMPTY=',
        'FOO=bar baz',
        'NVIDIA_VISIBLE_DEVICES=void',
        `HOME=${work}`,
        'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        'PORT=40123',
      ].sort(),
    );
    expect((await executor.inspect(handle)).address).toBe('127.0.0.1:40123');

    const given = await start(spec(['env'], { env: { PATH: '/usr/bin:/bin', HOME: '/tmp' } }));
    await executor.wait(given);
    const env2 = (await collect(executor.logs(given, { follow: false }))).map((l) => l.line).sort();
    expect(env2).toEqual(['CUDA_VISIBLE_DEVICES=', 'HOME=/tmp', 'NVIDIA_VISIBLE_DEVICES=void', 'PATH=/usr/bin:/bin']);
    expect((await executor.inspect(given)).address).toBeUndefined();
  });

  it('stops a program that handles SIGTERM within the grace period', async () => {
    const handle = await start(spec(sh("trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done")));
    await untilLogged(executor, handle, 'ready');
    const t0 = Date.now();
    await executor.stop(handle, 'SIGTERM', 5000);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(await executor.wait(handle)).toEqual({ exitCode: 0 });
    expect((await collect(executor.logs(handle, { follow: false }))).map((l) => l.line)).toContain('bye');
  });

  it('kills a program that ignores SIGTERM once the grace period is over', async () => {
    const handle = await start(spec(sh("trap '' TERM; echo ready; while :; do sleep 0.05; done")));
    await untilLogged(executor, handle, 'ready');
    const t0 = Date.now();
    await executor.stop(handle, 'SIGTERM', 300);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(await executor.wait(handle)).toEqual({ exitCode: 137, signal: 'SIGKILL' });
    expect((await executor.inspect(handle)).running).toBe(false);
    // Stopping an exited task is a no-op.
    await executor.stop(handle, 'SIGTERM', 1000);
  });

  it('delivers SIGINT to the program (not ignored, as it would be for a background job of sh)', async () => {
    const handle = await start(spec(['sleep', '30']));
    const t0 = Date.now();
    await executor.stop(handle, 'SIGINT', 5000);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(await executor.wait(handle)).toEqual({ exitCode: 130, signal: 'SIGINT' });
  });

  it('reports a program killed by a signal as 128+N', async () => {
    const handle = await start(spec(['sleep', '30']));
    const { pid } = await executor.inspect(handle);
    process.kill(pid!, 'SIGUSR1');
    expect(await executor.wait(handle)).toEqual({ exitCode: 138, signal: 'SIGUSR1' });
  });

  it('records the exit status even if the supervisor gets a stray SIGTERM', async () => {
    const handle = await start(spec(sh('while [ ! -e done ]; do sleep 0.05; done; exit 4')));
    process.kill(Number(handle.ref.supervisorPid), 'SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await executor.inspect(handle)).running).toBe(true);
    writeFileSync(join(stateDir, 'tasks', handle.taskId, 'work', 'done'), '');
    expect(await executor.wait(handle)).toEqual({ exitCode: 4 });
  });

  it('execs commands in the task environment and working dir, with a timeout', async () => {
    const handle = await start(spec(['sleep', '30'], { env: { GREETING: 'hello' } }));
    const work = join(stateDir, 'tasks', handle.taskId, 'work');
    const result = await executor.exec(handle, sh('echo "$GREETING"; pwd; echo oops >&2; exit 4'), 5000);
    expect(result.exitCode).toBe(4);
    expect(result.output.split('\n')).toEqual(expect.arrayContaining(['hello', work, 'oops']));
    expect(await executor.exec(handle, ['true'], 5000)).toEqual({ exitCode: 0, output: '' });
    expect((await executor.exec(handle, ['no-such-command-xyz'], 5000)).exitCode).toBe(127);

    const t0 = Date.now();
    const slow = await executor.exec(handle, sh('sleep 5; echo never'), 200);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(slow.exitCode).toBe(-1);
    expect(slow.output).toMatch(/timed out/);
    expect(slow.output).not.toMatch(/never/);

    await executor.stop(handle, 'SIGTERM', 1000);
    await expect(executor.exec(handle, ['true'], 1000)).rejects.toThrow(/not running/);
  });

  it('re-attaches after a restart: a new executor recovers the running task and gets its real exit code', async () => {
    const first = newExecutor();
    const s = spec(sh('while [ ! -e done ]; do sleep 0.05; done; echo finishing; exit 7'), { nodeId: 'node-r1' });
    const handle = await start(s, first);
    first.close();

    const second = newExecutor();
    const recovered = await second.recover('node-r1');
    expect(recovered).toHaveLength(1);
    const [task] = recovered;
    expect(task!.handle).toEqual(handle);
    expect(task!.inspection.running).toBe(true);
    expect(task!.inspection.pid).toBe(handle.ref.pid);
    expect(await second.recover('another-node')).toEqual([]);

    writeFileSync(join(stateDir, 'tasks', s.taskId, 'work', 'done'), '');
    expect(await second.wait(task!.handle)).toEqual({ exitCode: 7 });
    expect((await collect(second.logs(task!.handle, { follow: false }))).map((l) => l.line)).toEqual(['finishing']);
  });

  it('recovers a task that exited while swarmd was down as exited, with its code', async () => {
    const first = newExecutor();
    const handle = await start(spec(sh('sleep 0.2; exit 5'), { nodeId: 'node-r2' }), first);
    first.close();
    await until(() => !alive(Number(handle.ref.supervisorPid)));

    const second = newExecutor();
    const [task] = await second.recover('node-r2');
    expect(task!.inspection.running).toBe(false);
    expect(task!.inspection.exitStatus).toEqual({ exitCode: 5 });
    expect(await second.wait(task!.handle)).toEqual({ exitCode: 5 });
    await second.remove(task!.handle);
    expect(existsSync(join(stateDir, 'tasks', handle.taskId))).toBe(false);
  });

  it('refuses a missing or non-executable program, and a task dir that exists', async () => {
    const missing = spec(['/nonexistent/prog']);
    const error = await executor.start(missing).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ExecutorError);
    expect((error as ExecutorError).retryable).toBe(false);
    expect((error as Error).message).toMatch(/not found: \/nonexistent\/prog/);
    expect(existsSync(join(stateDir, 'tasks', missing.taskId))).toBe(false);

    await expect(executor.start(spec(['no-such-program-xyz']))).rejects.toThrow(/not found: no-such-program-xyz/);
    await expect(executor.prepare(spec(['no-such-program-xyz']))).rejects.toThrow(ExecutorError);

    const script = join(stateDir, 'not-executable.sh');
    writeFileSync(script, 'echo hi\n', { mode: 0o644 });
    await expect(executor.start(spec([script]))).rejects.toThrow(/not executable.*not-executable\.sh/);

    const twice = spec(['true']);
    await start(twice);
    const again = await executor.start(twice).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(ExecutorError);
    expect((again as Error).message).toMatch(/already exists/);
  });

  it('refuses to remove a running task', async () => {
    const handle = await start(spec(['sleep', '30']));
    await expect(executor.remove(handle)).rejects.toThrow(/still running/);
    await executor.stop(handle, 'SIGKILL', 0);
    await executor.remove(handle);
    expect(existsSync(join(stateDir, 'tasks', handle.taskId))).toBe(false);
  });

  it('follows logs as they are written and stops on abort', async () => {
    const handle = await start(spec(sh('i=0; while [ $i -lt 100 ]; do echo line$i; i=$((i+1)); sleep 0.05; done')));
    const abort = new AbortController();
    const seen: LogLine[] = [];
    for await (const line of executor.logs(handle, { follow: true, signal: abort.signal })) {
      seen.push(line);
      if (seen.length === 5) abort.abort();
    }
    expect(seen.map((l) => l.line)).toEqual(['line0', 'line1', 'line2', 'line3', 'line4']);
    const times = seen.map((l) => Date.parse(l.time));
    expect([...times].sort((a, b) => a - b)).toEqual(times);
    expect(times[0]!).toBeGreaterThan(Date.now() - 10_000);
    expect((await executor.inspect(handle)).running).toBe(true);
  });

  it('ends following when the task exits, with its last partial line', async () => {
    const handle = await start(spec(sh('echo a; sleep 0.2; echo b; printf c')));
    const lines = await collect(executor.logs(handle, { follow: true }));
    expect(lines.map((l) => l.line)).toEqual(['a', 'b', 'c']);
  });

  it('rotates logs at the size cap and keeps one old file', async () => {
    const rotating = newExecutor({ logMaxBytes: 4096 });
    // 200 lines of 100 bytes in bursts of 20, so rotation happens several times.
    const script =
      'i=0; while [ $i -lt 200 ]; do printf "line%04d %090d\\n" $i 0; i=$((i+1)); ' +
      '[ $((i % 20)) -eq 0 ] && sleep 0.15; done; true';
    const handle = await start(spec(sh(script)), rotating);
    expect(await rotating.wait(handle)).toEqual({ exitCode: 0 });
    const dir = join(stateDir, 'tasks', handle.taskId);
    expect(existsSync(join(dir, 'stdout.log.1'))).toBe(true);
    expect(statSync(join(dir, 'stdout.log.1')).size).toBeLessThanOrEqual(4096);
    expect(statSync(join(dir, 'stdout.log')).size).toBeLessThanOrEqual(4096);
    const lines = (await collect(rotating.logs(handle, { follow: false }))).map((l) => l.line);
    expect(lines.at(-1)).toMatch(/^line0199 /);
    expect(lines.length).toBeLessThanOrEqual(82);
    expect(lines.length).toBeGreaterThanOrEqual(20);
    // What is kept is a run of consecutive, whole lines.
    const numbers = lines.map((l) => Number(/^line(\d{4}) 0{90}$/.exec(l)?.[1]));
    numbers.forEach((n, i) => {
      expect(n).toBe(numbers[0]! + i);
    });
  });

  describe.runIf(isRoot)('as root', () => {
    it('runs tasks as nobody (65534) by default', async () => {
      const handle = await start(spec(['sleep', '30']));
      const status = procStatus((await executor.inspect(handle)).pid!);
      expect(status.Uid).toBe('65534\t65534\t65534\t65534');
      expect(status.Gid).toBe('65534\t65534\t65534\t65534');
      expect(status.Groups).toBe('');
      // The task's user owns its working dir.
      expect((await executor.exec(handle, sh('echo x > f && cat f && id -u'), 5000)).output).toBe('x\n65534\n');
      await executor.stop(handle, 'SIGKILL', 0);
    });

    it("honours the spec's user", async () => {
      const handle = await start(spec(['sleep', '30'], { user: '1000:1000' }));
      const status = procStatus((await executor.inspect(handle)).pid!);
      expect(status.Uid).toBe('1000\t1000\t1000\t1000');
      expect(status.Gid).toBe('1000\t1000\t1000\t1000');
      await executor.stop(handle, 'SIGKILL', 0);
    });

    it('runs as root only when allowed', async () => {
      const rooted = newExecutor({ allowRoot: true });
      const handle = await start(spec(['id', '-u']), rooted);
      await rooted.wait(handle);
      expect((await collect(rooted.logs(handle, { follow: false }))).map((l) => l.line)).toEqual(['0']);
    });
  });

  describe.runIf(!isRoot)('as a regular user', () => {
    it('refuses a spec that asks for another user, naming it', async () => {
      await expect(executor.start(spec(['true'], { user: '4242:4242' }))).rejects.toThrow(/"4242:4242"/);
    });
  });

  it('enforces a memory limit: cgroup v2 OOM kill where available, else the watchdog (with a warning)', async () => {
    const limited = newExecutor({ watchdogIntervalMs: 100 });
    const warned = warnings.length;
    // A program that keeps allocating (and touching) 16 MiB every 20 ms, up to 2 GiB.
    const hog = `const a = []; setInterval(() => { if (a.length < 128) a.push(Buffer.alloc(16 << 20, 1)); }, 20);`;
    const handle = await start(
      spec([process.execPath, '-e', hog], { limits: { memoryBytes: 200 * 1024 * 1024 } }),
      limited,
    );
    const status = await limited.wait(handle);
    const newWarnings = warnings.slice(warned);
    const viaWatchdog = newWarnings.some((w) => /memory limit .* enforced by swarmd sampling/.test(w));
    console.log(`memory limit path: ${viaWatchdog ? 'watchdog (no cgroup v2 memory controller)' : 'cgroup v2'}`);
    if (viaWatchdog) {
      expect(newWarnings.some((w) => /killed, resident memory \d+ bytes exceeds its limit/.test(w))).toBe(true);
    } else {
      expect(newWarnings.filter((w) => w.includes(handle.taskId))).toEqual([]);
    }
    expect(status).toEqual({ exitCode: 137, signal: 'SIGKILL', oomKilled: true });
  });

  it('writes limits to the cgroup it is given (a stand-in cgroupfs directory)', async () => {
    const fake = mkdtempSync(join(tmpdir(), 'swarmd-fake-cgroup-'));
    writeFileSync(join(fake, 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
    writeFileSync(join(fake, 'cgroup.subtree_control'), '');
    const withCgroups = newExecutor({ cgroupParent: fake });
    const warned = warnings.length;
    const s = spec(['sleep', '30'], { limits: { memoryBytes: 64 << 20, pids: 50, nanoCpus: 500_000_000 } });
    const handle = await start(s, withCgroups);
    const cg = join(fake, 'swarmd-tasks', s.taskId);
    expect(readFileSync(join(cg, 'memory.max'), 'utf8')).toBe(String(64 << 20));
    expect(readFileSync(join(cg, 'memory.swap.max'), 'utf8')).toBe('0');
    expect(readFileSync(join(cg, 'pids.max'), 'utf8')).toBe('50');
    expect(readFileSync(join(cg, 'cpu.max'), 'utf8')).toBe('50000 100000');
    expect(readFileSync(join(cg, 'cgroup.procs'), 'utf8')).toBe(String(handle.ref.pid));
    expect(warnings.slice(warned)).toEqual([]);
    await withCgroups.stop(handle, 'SIGTERM', 1000);
    expect(await withCgroups.wait(handle)).toEqual({ exitCode: 143, signal: 'SIGTERM' });
    rmSync(fake, { recursive: true, force: true });
  });

  it('warns about limits it cannot apply rather than pretending', async () => {
    const noCgroups = newExecutor({ cgroupParent: join(stateDir, 'no-such-cgroup') });
    const warned = warnings.length;
    const handle = await start(spec(['true'], { limits: { pids: 10, nanoCpus: 1e9 } }), noCgroups);
    await noCgroups.wait(handle);
    const newWarnings = warnings.slice(warned).join('\n');
    expect(newWarnings).toMatch(/pids limit 10 not applied/);
    expect(newWarnings).toMatch(/CPU limit 1 CPUs not applied/);
  });
});
