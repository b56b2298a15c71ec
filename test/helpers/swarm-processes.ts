// Real swarmd processes on loopback, driven through the CLIs, for integration tests.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '../..');
const SWARMD = join(ROOT, 'cli/swarmd.ts');
const SWARM = join(ROOT, 'cli/swarm.ts');

export interface NodeProcess {
  name: string;
  dataDir: string;
  port: number;
  child: ChildProcess;
  output: () => string;
  socket: string;
}

/** Where a node runs when not on the host's loopback: its address, in a network namespace or this one. */
export interface NodeHost {
  ip: string;
  netns?: string;
}

/** Which suite owns which band of node ports (SwarmProcesses.basePortFor). */
const PORT_BANDS = {
  swarm: 0,
  swarmTls: 1,
  forceNewCluster: 2,
  services: 3,
  servicesDocker: 4,
  updatesDocker: 5,
  gpus: 6,
  lb: 7,
  lbNetns: 8,
  benchUpdate: 9,
  benchFootprint: 10,
  benchDeploy: 11,
  benchLb: 12,
} as const;

export type PortSuite = keyof typeof PORT_BANDS;

export class SwarmProcesses {
  readonly root = mkdtempSync(join(tmpdir(), 'swarmd-it-'));
  readonly nodes = new Map<string, NodeProcess>();
  /** Its nodes listen from here, 5 ports per cluster. */
  readonly basePort: number;
  private nextPort = 0;
  /** Node arguments that run swarmd: the TypeScript entry point by default, or a bundle with V8 flags. */
  private readonly swarmdArgs: string[];
  /** Nodes (by name) that run in a network namespace; the others run on 127.0.0.1. */
  private readonly hosts: Record<string, NodeHost>;

  /**
   * A base port for a suite's nodes: its band of 1,000 ports from 10,000, at a random multiple of 5 in it, so
   * suites running at once do not meet. All below the kernel's ephemeral range (from 32768 by default), which
   * outgoing connections take their ports from: a bench's thousands of connections once held a node's port between
   * the pick and the listen (EADDRINUSE).
   */
  static basePortFor(suite: PortSuite): number {
    return 10_000 + PORT_BANDS[suite] * 1_000 + Math.floor(Math.random() * 199) * 5;
  }

  /** ports: the suite whose band to pick from, or a base port from basePortFor. */
  constructor(ports: PortSuite | number, opts: { swarmdArgs?: string[]; hosts?: Record<string, NodeHost> } = {}) {
    this.basePort = typeof ports === 'number' ? ports : SwarmProcesses.basePortFor(ports);
    this.swarmdArgs = opts.swarmdArgs ?? [SWARMD];
    this.hosts = opts.hosts ?? {};
  }

  /** The address a node listens on (and is joined at). */
  ipOf(name: string): string {
    return this.hosts[name]?.ip ?? '127.0.0.1';
  }

  private start(name: string, args: string[], port: number): NodeProcess {
    const dataDir = join(this.root, name);
    const command = [process.execPath, ...this.swarmdArgs, ...args, '--data-dir', dataDir];
    const netns = this.hosts[name]?.netns;
    // `ip netns exec` enters the namespace and execs the command: the child's PID is swarmd's own.
    const [file, ...argv] = netns === undefined ? command : ['ip', 'netns', 'exec', netns, ...command];
    const child = spawn(file!, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, SWARMD_DATA_DIR: dataDir },
    });
    let output = '';
    child.stdout!.on('data', (c: Buffer) => {
      output += c.toString();
    });
    child.stderr!.on('data', (c: Buffer) => {
      output += c.toString();
    });
    const node: NodeProcess = {
      name,
      dataDir,
      port,
      child,
      output: () => output,
      socket: join(dataDir, 'swarmd.sock'),
    };
    this.nodes.set(name, node);
    return node;
  }

  /** `swarmd init`; resolves with the node once it printed its join instructions. */
  async init(name: string, extra: string[] = []): Promise<NodeProcess> {
    const port = this.basePort + this.nextPort++;
    const node = this.start(name, ['init', '--listen-addr', `${this.ipOf(name)}:${port}`, ...extra], port);
    await waitFor(
      () => node.output().includes('swarmd join --token'),
      30_000,
      () => node.output(),
    );
    return node;
  }

  async join(name: string, token: string, manager: NodeProcess, extra: string[] = []): Promise<NodeProcess> {
    const port = this.basePort + this.nextPort++;
    const node = this.start(
      name,
      [
        'join',
        '--token',
        token,
        '--listen-addr',
        `${this.ipOf(name)}:${port}`,
        ...extra,
        `${this.ipOf(manager.name)}:${manager.port}`,
      ],
      port,
    );
    await waitFor(
      () => node.output().includes('joined a swarm'),
      30_000,
      () => node.output(),
    );
    return node;
  }

  /** `swarmd run` on an existing data dir. */
  async run(name: string, extra: string[] = []): Promise<NodeProcess> {
    const old = this.nodes.get(name)!;
    const node = this.start(name, ['run', '--listen-addr', `${this.ipOf(name)}:${old.port}`, ...extra], old.port);
    await waitFor(
      () => swarm(node, 'info').status === 0,
      30_000,
      () => node.output(),
    );
    return node;
  }

  /** SIGTERM, resolved once the process has exited. */
  stop(name: string): Promise<void> {
    return this.signal(name, 'SIGTERM');
  }

  kill9(name: string): Promise<void> {
    return this.signal(name, 'SIGKILL');
  }

  private signal(name: string, signal: NodeJS.Signals): Promise<void> {
    const node = this.nodes.get(name)!;
    return new Promise((exited) => {
      if (node.child.exitCode !== null || node.child.signalCode !== null) return exited();
      node.child.once('exit', () => exited());
      node.child.kill(signal);
    });
  }

  async stopAll(): Promise<void> {
    await Promise.all(
      [...this.nodes.values()].map(
        (n) =>
          new Promise<void>((done) => {
            if (n.child.exitCode !== null || n.child.signalCode !== null) return done();
            n.child.once('exit', () => done());
            n.child.kill('SIGTERM');
            setTimeout(() => n.child.kill('SIGKILL'), 5000).unref();
          }),
      ),
    );
    rmSync(this.root, { recursive: true, force: true });
  }
}

export interface CliResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs the `swarm` CLI against a node's socket. */
export function swarm(node: NodeProcess, ...args: string[]): CliResult {
  const result = spawnSync(process.execPath, [SWARM, '--host', node.socket, ...args], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

export function swarmdCli(...args: string[]): CliResult {
  const result = spawnSync(process.execPath, [SWARMD, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

export function swarmJson<T>(node: NodeProcess, ...args: string[]): T {
  const result = swarm(node, ...args, '--format', 'json');
  if (result.status !== 0) throw new Error(`swarm ${args.join(' ')} failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

export async function waitFor(check: () => boolean, timeoutMs: number, describe?: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let ok = false;
    try {
      ok = check();
    } catch {
      ok = false;
    }
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms${describe ? `:\n${describe()}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
