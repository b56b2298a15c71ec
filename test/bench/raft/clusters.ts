// The two systems the Raft benchmark compares, behind one interface: three swarmd Raft members (our
// RaftNode, FileStorage with fsync, TCP transport) and three etcd members, all on loopback.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { postOnce } from '../lib/http-load.ts';
import { killHard, type Started, startProcess, stopGracefully } from '../lib/processes.ts';

export interface BenchCluster {
  name: string;
  memberUrls: string[];
  /** URL writes are sent to on member i. */
  writeUrl(i: number): string;
  body(n: number): string;
  start(): Promise<void>;
  leaderIndex(): Promise<number>;
  kill(i: number): Promise<void>;
  restart(i: number): Promise<void>;
  stop(): Promise<void>;
}

const VALUE = Buffer.alloc(256, 'v').toString('base64');

export class SwarmdRaftCluster implements BenchCluster {
  name = 'swarmd-raft';
  memberUrls: string[];
  private readonly members: (Started | null)[] = [null, null, null];
  private readonly dir: string;
  private readonly base: number;

  constructor(dir: string, basePort = 27100) {
    this.dir = dir;
    this.base = basePort;
    this.memberUrls = [0, 1, 2].map((i) => `http://127.0.0.1:${basePort + 10 + i}`);
  }

  writeUrl(i: number): string {
    return `${this.memberUrls[i]}/put`;
  }

  body(n: number): string {
    return `{"key":"bench/${String(n % 100_000).padStart(8, '0')}","value":"${VALUE}"}`;
  }

  async start(): Promise<void> {
    for (let i = 0; i < 3; i++) await this.launch(i, i === 2);
  }

  private async launch(i: number, waitReady: boolean): Promise<void> {
    const peers = [0, 1, 2].map((j) => `n${j + 1}=127.0.0.1:${this.base + j}`).join(',');
    const server = resolve(import.meta.dirname, 'server.ts');
    const dataDir = join(this.dir, `n${i + 1}`);
    mkdirSync(dataDir, { recursive: true });
    const args = [server, '--id', `n${i + 1}`, '--dir', dataDir, '--raft-port', String(this.base + i)];
    args.push('--http-port', String(this.base + 10 + i), '--peers', peers);
    // Members start listening before a leader exists; wait only for the HTTP port, then for a leader.
    this.members[i] = await startProcess(process.execPath, args, join(this.dir, `n${i + 1}.log`), () =>
      fetch(`${this.memberUrls[i]}/status`).then((r) => r.ok),
    );
    if (waitReady) await this.leaderIndex();
  }

  async leaderIndex(): Promise<number> {
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      for (let i = 0; i < 3; i++) {
        if (!this.members[i]) continue;
        const status = await fetch(`${this.memberUrls[i]}/status`)
          .then((r) => r.json() as Promise<{ role: string }>)
          .catch(() => null);
        if (status?.role === 'leader') return i;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('no swarmd raft leader within 20 s');
  }

  async kill(i: number): Promise<void> {
    const member = this.members[i];
    if (member) await killHard(member);
    this.members[i] = null;
  }

  async restart(i: number): Promise<void> {
    await this.launch(i, false);
  }

  async stop(): Promise<void> {
    for (const m of this.members) if (m) await stopGracefully(m);
  }
}

export class EtcdCluster implements BenchCluster {
  name = 'etcd';
  memberUrls = ['http://127.0.0.1:2379', 'http://127.0.0.1:22379', 'http://127.0.0.1:32379'];
  private readonly members: (Started | null)[] = [null, null, null];
  private readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  static available(): string | null {
    try {
      return execFileSync('etcd', ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? 'etcd';
    } catch {
      return null;
    }
  }

  writeUrl(i: number): string {
    return `${this.memberUrls[i]}/v3/kv/put`;
  }

  body(n: number): string {
    const key = Buffer.from(`bench/${String(n % 100_000).padStart(8, '0')}`).toString('base64');
    return `{"key":"${key}","value":"${VALUE}"}`;
  }

  private peerUrl(i: number): string {
    return `http://127.0.0.1:${[2380, 22380, 32380][i]}`;
  }

  async start(): Promise<void> {
    mkdirSync(this.dir, { recursive: true });
    await Promise.all([0, 1, 2].map((i) => this.launch(i)));
    await this.leaderIndex();
  }

  private async launch(i: number): Promise<void> {
    const name = `m${i + 1}`;
    const cluster = [0, 1, 2].map((j) => `m${j + 1}=${this.peerUrl(j)}`).join(',');
    const args = [
      '--name',
      name,
      '--data-dir',
      join(this.dir, `${name}.data`),
      '--listen-client-urls',
      this.memberUrls[i]!,
      '--advertise-client-urls',
      this.memberUrls[i]!,
      '--listen-peer-urls',
      this.peerUrl(i),
      '--initial-advertise-peer-urls',
      this.peerUrl(i),
      '--initial-cluster',
      cluster,
      '--initial-cluster-token',
      'swarmd-bench',
      '--initial-cluster-state',
      'new',
      '--logger',
      'zap',
      '--log-outputs',
      join(this.dir, `${name}.log`),
    ];
    this.members[i] = await startProcess('etcd', args, join(this.dir, `${name}.out`), () =>
      fetch(`${this.memberUrls[i]}/health`).then((r) => r.status < 500),
    );
  }

  async leaderIndex(): Promise<number> {
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      for (let i = 0; i < 3; i++) {
        if (!this.members[i]) continue;
        const status = await postOnce(`${this.memberUrls[i]}/v3/maintenance/status`, '{}', 1000)
          .then((b) => JSON.parse(b) as { leader: string; header: { member_id: string } })
          .catch(() => null);
        if (status && status.leader === status.header.member_id) return i;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('no etcd leader within 20 s');
  }

  async kill(i: number): Promise<void> {
    const member = this.members[i];
    if (member) await killHard(member);
    this.members[i] = null;
  }

  async restart(i: number): Promise<void> {
    await this.launch(i);
  }

  async stop(): Promise<void> {
    for (const m of this.members) if (m) await stopGracefully(m);
  }
}
