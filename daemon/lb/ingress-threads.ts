// A node's published ports served by worker threads: each thread runs its own IngressSet on the same ports
// (SO_REUSEPORT, so the kernel spreads new connections over the threads), and forwards its connections itself.
//
// Why: forwarding is CPU work per chunk of every connection. In the daemon's main thread it competes with Raft's
// heartbeats and the API on one core; in threads it uses the node's other cores and leaves the main thread's event
// loop to the control plane. On the lb bench (2 cores shared with wrk and the backends), two acceptor threads
// forward ~1.3x the requests of one.
//
// Round-robin rotates as one across the threads (a cursor per port in shared memory): three new connections go to
// three tasks whichever threads the kernel gave them to. Least-connections and p2c count each thread's own.
//
// What stays in the main thread: libp2p. Each thread keeps its own tunnels to other nodes (tunnel.ts): over the data
// path (data-path.ts), which the thread dials itself with a ticket the main thread fetched over the mesh for it, or
// else through the mesh, whose streams the main thread opens and relays (thread-relay.ts). Streams other nodes open to this
// node's tasks are served by the main thread, so their drain bookkeeping (meshStreams) is here. Each thread keeps its own outlier detection and counters;
// stats() sums the counters.
//
// The threads start with the first table that publishes a port, so a node that publishes nothing pays nothing. One
// that dies is started again (after a second), with the current table and the drains under way.
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { type DataPathTicket, type FetchTicket, noTunnels, type TunnelPathCounts } from './data-path.ts';
import { DrainTracker } from './drain-tracker.ts';
import type { TaskId } from './endpoints.ts';
import type { PublishedPorts } from './ingress-set.ts';
import type { RelayMode } from './native-relay.ts';
import type { ServiceStats } from './stats.ts';
import { forgetGone, type TableService } from './table.ts';
import { serveTunnelRelay, type TunnelRelay } from './thread-relay.ts';
import type { OpenTunnel } from './tunnel.ts';

/** What a thread is started with (workerData). */
export interface IngressThreadData {
  index: number;
  nodeId: string;
  host: string | undefined;
  relayPath: string;
  /** Whether to ask the main thread for data path tickets (else every tunnel goes through the mesh). */
  dataPath: boolean;
  /** Round-robin cursors shared by every thread: 65536 Int32 slots, indexed by published port. */
  roundRobinSlots: SharedArrayBuffer;
  relay: RelayMode | undefined;
}

export type ToIngressThread =
  | { type: 'table'; table: readonly TableService[] }
  | { type: 'drain'; id: number; taskId: TaskId; graceMs: number }
  | { type: 'stats'; id: number }
  | { type: 'close'; id: number }
  /** The answer to the thread's ticket request of the same id: undefined when there is none for the peer. */
  | { type: 'ticket'; id: number; ticket: DataPathTicket | undefined; error?: string };

export type FromIngressThread =
  | { type: 'log'; level: 'info' | 'warn'; message: string }
  | { type: 'listening'; ports: string[] }
  | { type: 'done'; id: number; stats?: ServiceStats[]; tunnels?: TunnelPathCounts }
  | { type: 'ticket'; id: number; peerId: string };

/** Source or bundle: the thread's entry sits next to this module (cli/build.ts names it ingress-thread.mjs). */
const THREAD_ENTRY = new URL(
  import.meta.url.endsWith('.ts') ? './ingress-thread.ts' : './ingress-thread.mjs',
  import.meta.url,
);
const RESTART_DELAY_MS = 1000;
/** A thread that does not answer a stats request in time is counted as having nothing to report. */
const STATS_TIMEOUT_MS = 2000;
/** For a data path ticket, asked over the mesh for a thread. */
const TICKET_TIMEOUT_MS = 5000;

/** Each thread opens its own tunnel to each node it forwards to, which bounds the tunnels a peer must accept. */
export const MAX_LB_THREADS = 16;

/** Below this much memory the main thread serves the ports: each thread costs ~17 MiB of RSS (measured, idle). */
const THREADS_MIN_MEMORY_BYTES = 2 * 1024 ** 3;

/**
 * One ingress thread per CPU, up to 4 (beyond that the backends and the kernel's loopback are the limit on the
 * machines measured). On a single CPU a thread would only add a hop, and on a small device its memory is worth
 * more than the throughput, so the main thread serves the ports there.
 */
export function defaultLbThreads(): number {
  const cpus = availableParallelism();
  return cpus < 2 || totalmem() < THREADS_MIN_MEMORY_BYTES ? 0 : Math.min(4, cpus);
}

export interface IngressThreadsOptions {
  threads: number;
  nodeId: string;
  /** Listening address of every published port; left out, all interfaces. */
  host?: string;
  /** Opens a tunnel's transport to a peer over the mesh, for the threads (through the relay). */
  openTunnel: OpenTunnel;
  /** Data path tickets for the threads; left out, their tunnels go through the mesh only. */
  fetchTicket?: FetchTicket;
  /** How TCP connections to local tasks move their bytes (forwarder.ts); default native where built. */
  relay?: RelayMode;
  log: (level: 'info' | 'warn', message: string) => void;
}

interface Thread {
  index: number;
  worker: Worker;
  listening: string[];
  exited: boolean;
  /** Requests waiting for their 'done', by id. */
  pending: Map<number, (done: Extract<FromIngressThread, { type: 'done' }> | undefined) => void>;
  /** The thread's tunnels by path, as of its last stats answer. */
  tunnels: TunnelPathCounts;
}

export class IngressThreads implements PublishedPorts {
  private readonly opts: IngressThreadsOptions;
  readonly meshStreams = new DrainTracker();
  /** Tasks drain() was called for, with their grace: told to threads started later too. */
  private readonly drained = new Map<TaskId, number>();
  private readonly threads: Thread[] = [];
  private table: readonly TableService[] = [];
  private relay: { relay: TunnelRelay; dir: string } | undefined;
  private nextRequestId = 1;
  private closed = false;
  /** One round-robin rotation per port across the threads: 256 KiB, allocated with the threads. */
  private roundRobinSlots: SharedArrayBuffer | undefined;

  constructor(opts: IngressThreadsOptions) {
    this.opts = opts;
  }

  update(table: readonly TableService[]): void {
    if (this.closed) return;
    this.table = table;
    for (const taskId of forgetGone(this.drained, table)) this.meshStreams.undrain(taskId);
    if (this.threads.length === 0) {
      if (!table.some((service) => service.ports.length > 0)) return;
      this.start();
      return;
    }
    for (const thread of this.threads) thread.worker.postMessage({ type: 'table', table } satisfies ToIngressThread);
  }

  async drain(taskId: TaskId, graceMs: number): Promise<void> {
    this.drained.set(taskId, graceMs);
    await Promise.all([
      this.meshStreams.drain(taskId, graceMs),
      ...this.threads.map((thread) => this.request(thread, { type: 'drain', taskId, graceMs })),
    ]);
  }

  /** Each thread's entries, one per port and thread: renderMetrics sums them per service and task. */
  async stats(): Promise<ServiceStats[]> {
    const lists = await Promise.all(
      this.threads.map((thread) =>
        Promise.race([
          this.request(thread, { type: 'stats' }).then((done) => {
            if (done?.tunnels !== undefined) thread.tunnels = done.tunnels;
            return done?.stats;
          }),
          new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), STATS_TIMEOUT_MS).unref()),
        ]),
      ),
    );
    return lists.flatMap((list) => list ?? []);
  }

  /** The threads' tunnels to other nodes by path, as of the last stats(). */
  tunnelCounts(): TunnelPathCounts {
    const counts = noTunnels();
    for (const thread of this.threads) {
      counts.direct += thread.tunnels.direct;
      counts.mesh += thread.tunnels.mesh;
      counts.native += thread.tunnels.native;
      counts.mux += thread.tunnels.mux;
    }
    return counts;
  }

  listening(): string[] {
    const ports = new Set<string>();
    for (const thread of this.threads) for (const port of thread.listening) ports.add(port);
    return [...ports].sort();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Each thread closes its ingresses (cutting their connections) before it is terminated.
    await Promise.all(
      this.threads.map(async (thread) => {
        await this.request(thread, { type: 'close' });
        await thread.worker.terminate();
      }),
    );
    this.threads.length = 0;
    if (this.relay !== undefined) {
      const { relay, dir } = this.relay;
      await new Promise<void>((resolve) => relay.server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    }
  }

  private start(): void {
    // mkdtemp makes the directory 0700: only this daemon's user can reach the relay socket. Without one (no
    // writable temporary directory), the threads still serve local tasks; remote ones fail over to those.
    let relayPath = '';
    try {
      const dir = mkdtempSync(join(tmpdir(), 'swarmd-lb-'));
      relayPath = join(dir, 'relay.sock');
      const relay = serveTunnelRelay(relayPath, this.opts.openTunnel, (message) => this.opts.log('warn', message));
      this.relay = { relay, dir };
    } catch (err) {
      this.opts.log('warn', `lb: ingress threads cannot reach other nodes: ${(err as Error).message}`);
    }
    for (let index = 0; index < this.opts.threads; index++) this.threads.push(this.spawn(index, relayPath));
    this.opts.log('info', `lb: published ports served by ${this.opts.threads} thread(s)`);
  }

  private spawn(index: number, relayPath: string): Thread {
    this.roundRobinSlots ??= new SharedArrayBuffer(65536 * Int32Array.BYTES_PER_ELEMENT);
    const data: IngressThreadData = {
      index,
      nodeId: this.opts.nodeId,
      host: this.opts.host,
      relayPath,
      dataPath: this.opts.fetchTicket !== undefined,
      roundRobinSlots: this.roundRobinSlots,
      relay: this.opts.relay,
    };
    const worker = new Worker(THREAD_ENTRY, { workerData: data, name: `swarmd-lb-${index}` });
    const thread: Thread = {
      index,
      worker,
      listening: [],
      exited: false,
      pending: new Map(),
      tunnels: noTunnels(),
    };
    worker.on('message', (message: FromIngressThread) => this.onMessage(thread, message));
    worker.on('error', (err) => this.opts.log('warn', `lb: ingress thread ${index} failed: ${err.message}`));
    worker.on('exit', (code) => this.onExit(thread, code, relayPath));
    // Queued until the thread is up: the current table, then the drains it must honour too.
    worker.postMessage({ type: 'table', table: this.table } satisfies ToIngressThread);
    for (const [taskId, graceMs] of this.drained) void this.request(thread, { type: 'drain', taskId, graceMs });
    return thread;
  }

  private onMessage(thread: Thread, message: FromIngressThread): void {
    switch (message.type) {
      case 'log':
        this.opts.log(message.level, message.message);
        return;
      case 'listening':
        thread.listening = message.ports;
        return;
      case 'done': {
        const resolve = thread.pending.get(message.id);
        thread.pending.delete(message.id);
        resolve?.(message);
        return;
      }
      case 'ticket':
        this.fetchTicketFor(thread, message.id, message.peerId);
        return;
    }
  }

  private onExit(thread: Thread, code: number, relayPath: string): void {
    // Its connections died with it: nothing is left to wait for.
    thread.exited = true;
    for (const resolve of thread.pending.values()) resolve(undefined);
    thread.pending.clear();
    thread.listening = [];
    if (this.closed) return;
    this.opts.log('warn', `lb: ingress thread ${thread.index} exited (code ${code}); starting it again`);
    setTimeout(() => {
      const at = this.threads.indexOf(thread);
      if (this.closed || at < 0) return;
      this.threads[at] = this.spawn(thread.index, relayPath);
    }, RESTART_DELAY_MS).unref();
  }

  private fetchTicketFor(thread: Thread, id: number, peerId: string): void {
    const answer = (message: Omit<Extract<ToIngressThread, { type: 'ticket' }>, 'type' | 'id'>) => {
      if (!thread.exited) thread.worker.postMessage({ type: 'ticket', id, ...message } satisfies ToIngressThread);
    };
    if (this.opts.fetchTicket === undefined) {
      answer({ ticket: undefined });
      return;
    }
    // The thread's own dial has its own timeout; this bounds the mesh request.
    this.opts.fetchTicket(peerId, AbortSignal.timeout(TICKET_TIMEOUT_MS)).then(
      (ticket) => answer({ ticket }),
      (err: Error) => answer({ ticket: undefined, error: err.message }),
    );
  }

  private request(
    thread: Thread,
    message: DistributiveOmit<Extract<ToIngressThread, { type: 'drain' | 'stats' | 'close' }>, 'id'>,
  ): Promise<Extract<FromIngressThread, { type: 'done' }> | undefined> {
    if (thread.exited) return Promise.resolve(undefined);
    const id = this.nextRequestId++;
    return new Promise((resolve) => {
      thread.pending.set(id, resolve);
      thread.worker.postMessage({ ...message, id } as ToIngressThread);
    });
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
