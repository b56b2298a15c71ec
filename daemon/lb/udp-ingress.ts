// The ingress for one published UDP port. UDP has no connections, so the unit balanced is the flow: the datagrams
// from one client address and port. The first datagram of a flow picks a task (same balancer, drains and outlier
// detection as TCP, picker.ts); the flow's later datagrams go to that task, and the task's answers go back to the
// client from the published port. A flow ends after idleTimeoutMs without a datagram either way.
//
// A task on this node is reached through a UDP socket connected to its address; one elsewhere through a mesh
// stream to its node carrying framed datagrams (udp-relay.ts; that node relays them to the task).
//
// Retries: until the task's first answer, a flow keeps what it sent (bounded). When the task's port turns out to
// be closed (ECONNREFUSED, from the ICMP error) or its node refuses the stream, none of it reached a program: the
// flow is tried on another task with the same datagrams, and the failure goes to outlier detection. After the
// first answer, a failure ends the flow; the client's next datagram starts a new one.
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Endpoint, ServiceEndpoints, TaskId } from './endpoints.ts';
import { PortIngress, type PortIngressOptions } from './port-ingress.ts';
import { encodeRemoteHeader, openTaskStream, TaskDrainingError } from './remote.ts';
import type { ServiceStats, TaskCounters } from './stats.ts';
import { closeQuietly, connectUdpTask, DatagramReader, writeDatagram } from './udp-relay.ts';

export interface UdpIngressOptions extends PortIngressOptions {
  /** A flow with no datagram either way for this long ends. Default 60 s. */
  idleTimeoutMs?: number;
  /** Flows at once; a new client beyond it has its datagrams dropped (and counted) until one ends. Default 8192. */
  maxFlows?: number;
}

// What a flow keeps of what it sent, for a retry elsewhere: until the task's first answer, and no longer than
// RETRY_WINDOW_MS after the datagrams went out (a closed port answers with its ICMP error within a round trip; a
// one-way protocol, syslog say, never answers at all). Bounded per flow and per ingress, so that many clients of
// a silent service cannot make the node hold gigabytes: past a bound, a flow keeps nothing (and cannot be retried).
const MAX_UNANSWERED_DATAGRAMS = 16;
const MAX_UNANSWERED_BYTES = 64 * 1024;
const MAX_KEPT_BYTES = 16 * 1024 * 1024;
const RETRY_WINDOW_MS = 2000;

interface Flow {
  /** "address|port": its key in the flow table. */
  key: string;
  address: string;
  port: number;
  state: 'connecting' | 'forwarding' | 'closed';
  tried: Set<TaskId>;
  attempts: number;
  taskId: TaskId | undefined;
  task: TaskCounters | undefined;
  /** The task's answered once: no retry after this. */
  answered: boolean;
  /** Sent or waiting to be, until the first answer; undefined once over the bounds (no retry possible then). */
  unanswered: Buffer[] | undefined;
  unansweredBytes: number;
  /** When it last started forwarding to a task: what it keeps is forgotten RETRY_WINDOW_MS after. */
  forwardingSince: number;
  /** Sends one datagram to the task; set once forwarding. */
  send: ((datagram: Buffer) => void) | undefined;
  /** Closes the socket or stream to the task. */
  closeBackend: (() => void) | undefined;
  abort: AbortController | undefined;
  release: (() => void) | undefined;
  lastSeen: number;
}

export class UdpIngress extends PortIngress {
  private readonly options: UdpIngressOptions;
  private readonly idleTimeoutMs: number;
  private readonly maxFlows: number;
  private readonly flows = new Map<string, Flow>();
  private socket: UdpSocket | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  /** Bytes all flows keep for retries (see MAX_KEPT_BYTES). */
  private keptBytes = 0;
  /** Datagrams dropped because maxFlows flows were open: logged once per burst. */
  private overflowLogged = false;

  constructor(options: UdpIngressOptions) {
    super(options, 'udp');
    this.options = options;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
    this.maxFlows = options.maxFlows ?? 8192;
  }

  /** Binds the port; resolves with the port bound (the real one when 0 was asked). */
  async listen(): Promise<{ port: number }> {
    const host = this.options.host;
    // Every address: IPv6 with IPv4 mapped in where the host has IPv6, else IPv4 alone.
    const attempts: ('udp4' | 'udp6')[] = host === undefined ? ['udp6', 'udp4'] : [isIP(host) === 6 ? 'udp6' : 'udp4'];
    let lastError: Error | undefined;
    for (const type of attempts) {
      try {
        this.socket = await this.bind(type, host ?? (type === 'udp6' ? '::' : '0.0.0.0'));
        break;
      } catch (err) {
        lastError = err as Error;
        if ((err as NodeJS.ErrnoException).code !== 'EAFNOSUPPORT') throw err;
      }
    }
    if (this.socket === undefined) throw lastError ?? new Error('cannot bind');
    this.listeningPort = this.socket.address().port;
    this.sweeper = setInterval(() => this.sweep(), Math.min(5000, Math.max(50, this.idleTimeoutMs / 4)));
    this.sweeper.unref();
    return { port: this.listeningPort };
  }

  /** Counters now; for UDP a "connection" is a flow. */
  stats(): ServiceStats {
    return this.counters.snapshot(this.listeningPort, this.currentService());
  }

  /** Stops receiving and ends every flow. */
  async close(): Promise<void> {
    clearInterval(this.sweeper);
    for (const flow of [...this.flows.values()]) this.closeFlow(flow);
    const socket = this.socket;
    this.socket = undefined;
    if (socket !== undefined) await new Promise<void>((resolve) => socket.close(() => resolve()));
  }

  private bind(type: 'udp4' | 'udp6', address: string): Promise<UdpSocket> {
    return new Promise((resolve, reject) => {
      const socket = createSocket({ type, ...(this.options.reusePort ? { reusePort: true } : {}) });
      socket.once('error', reject);
      socket.bind({ port: this.options.port, address, exclusive: true }, () => {
        socket.off('error', reject);
        // Receive errors (ICMP from a client gone away, buffers full) must not take the daemon down.
        socket.on('error', (err) => this.log(`lb: udp ingress on port ${this.listeningPort}: ${err.message}`));
        socket.on('message', (message, from) => this.onDatagram(message, from));
        resolve(socket);
      });
    });
  }

  private onDatagram(datagram: Buffer, from: RemoteInfo): void {
    const key = `${from.address}|${from.port}`;
    let flow = this.flows.get(key);
    if (flow === undefined) {
      if (this.flows.size >= this.maxFlows) {
        this.counters.service.errors++;
        if (!this.overflowLogged)
          this.log(`lb: udp port ${this.portName()} has ${this.maxFlows} flows: dropping new ones`);
        this.overflowLogged = true;
        return;
      }
      flow = this.newFlow(key, from);
      this.flows.set(key, flow);
    }
    flow.lastSeen = Date.now();
    this.counters.service.bytesIn += datagram.length;
    if (flow.task !== undefined) flow.task.bytesIn += datagram.length;
    this.keepUnanswered(flow, datagram);
    if (flow.state === 'forwarding') flow.send?.(datagram);
    else if (flow.state === 'connecting' && flow.attempts === 0) this.attempt(flow);
  }

  private newFlow(key: string, from: RemoteInfo): Flow {
    this.counters.service.connectionsTotal++;
    this.counters.service.connectionsActive++;
    return {
      key,
      address: from.address,
      port: from.port,
      state: 'connecting',
      tried: new Set(),
      attempts: 0,
      taskId: undefined,
      task: undefined,
      answered: false,
      unanswered: [],
      unansweredBytes: 0,
      forwardingSince: 0,
      send: undefined,
      closeBackend: undefined,
      abort: undefined,
      release: undefined,
      lastSeen: Date.now(),
    };
  }

  /** Keeps what was sent until the first answer, within bounds; past them the flow cannot be retried. */
  private keepUnanswered(flow: Flow, datagram: Buffer): void {
    if (flow.unanswered === undefined) return;
    const over =
      flow.unanswered.length >= MAX_UNANSWERED_DATAGRAMS ||
      flow.unansweredBytes + datagram.length > MAX_UNANSWERED_BYTES ||
      this.keptBytes + datagram.length > MAX_KEPT_BYTES;
    if (!over) {
      flow.unanswered.push(datagram);
      flow.unansweredBytes += datagram.length;
      this.keptBytes += datagram.length;
      // While connecting, what is kept is all there is to send: past a bound, the newest is dropped.
    } else if (flow.state !== 'connecting') {
      this.forgetUnanswered(flow);
    }
  }

  private forgetUnanswered(flow: Flow): void {
    this.keptBytes -= flow.unansweredBytes;
    flow.unanswered = undefined;
    flow.unansweredBytes = 0;
  }

  private attempt(flow: Flow): void {
    if (flow.state === 'closed') return;
    flow.state = 'connecting';
    const next = this.nextAttempt(flow);
    if (next === undefined) {
      this.closeFlow(flow);
      return;
    }
    const { service, endpoint } = next;
    if (endpoint.nodeId === this.nodeId) this.connectLocal(flow, service, endpoint);
    else this.connectRemote(flow, service, endpoint);
  }

  private connectLocal(flow: Flow, service: ServiceEndpoints, endpoint: Endpoint): void {
    connectUdpTask(endpoint.address, (err, socket) => {
      if (flow.state === 'closed') {
        if (socket) closeQuietly(socket);
        return;
      }
      if (err !== undefined || socket === undefined) {
        this.onFailure(flow, service, endpoint, err);
        return;
      }
      socket.on('message', (answer) => this.onAnswer(flow, endpoint, answer));
      socket.on('error', (error) => {
        closeQuietly(socket);
        if (flow.state !== 'closed' && flow.taskId === endpoint.taskId) this.onFailure(flow, service, endpoint, error);
      });
      this.startForwarding(flow, endpoint, {
        send: (datagram) => socket.send(datagram, () => {}),
        close: () => closeQuietly(socket),
      });
    });
  }

  private connectRemote(flow: Flow, service: ServiceEndpoints, endpoint: Endpoint): void {
    const dialRemote = this.options.dialRemote;
    if (dialRemote === undefined) {
      this.onFailure(flow, service, endpoint, new Error(`task ${endpoint.taskId} is on node ${endpoint.nodeId}`));
      return;
    }
    const abort = new AbortController();
    flow.abort = abort;
    const header = encodeRemoteHeader({ taskId: endpoint.taskId, udp: true });
    openTaskStream(dialRemote, endpoint, header, this.connectTimeoutMs, abort, (err, stream, early) => {
      flow.abort = undefined;
      if (flow.state === 'closed') {
        stream?.destroy();
        return;
      }
      if (err !== undefined || stream === undefined) {
        this.onFailure(flow, service, endpoint, err);
        return;
      }
      this.forwardOverStream(flow, service, endpoint, stream, early);
    });
  }

  private forwardOverStream(
    flow: Flow,
    service: ServiceEndpoints,
    endpoint: Endpoint,
    stream: Duplex,
    early: Buffer | undefined,
  ): void {
    const reader = new DatagramReader((answer) => this.onAnswer(flow, endpoint, answer));
    stream.on('data', (chunk: Buffer) => reader.push(chunk));
    const ended = () => {
      if (flow.state === 'closed' || flow.taskId !== endpoint.taskId) return;
      // Ended by the task's node before any answer: the task's port is closed there (or the node went away).
      if (!flow.answered) this.onFailure(flow, service, endpoint, new Error('closed by its node before any answer'));
      else this.closeFlow(flow);
    };
    stream.on('error', ended);
    stream.once('end', ended);
    stream.once('close', ended);
    this.startForwarding(flow, endpoint, {
      send: (datagram) => writeDatagram(stream, datagram),
      close: () => stream.destroy(),
    });
    if (early !== undefined) reader.push(early);
    stream.resume();
  }

  private startForwarding(
    flow: Flow,
    endpoint: Endpoint,
    backend: { send: (datagram: Buffer) => void; close: () => void },
  ): void {
    if (this.drains.isDraining(endpoint.taskId)) {
      // drain() began while this flow was being set up: go elsewhere with what it holds.
      backend.close();
      this.attempt(flow);
      return;
    }
    flow.state = 'forwarding';
    flow.taskId = endpoint.taskId;
    flow.send = backend.send;
    flow.closeBackend = backend.close;
    const task = this.counters.task(endpoint.taskId);
    task.connectionsTotal++;
    task.connectionsActive++;
    flow.task = task;
    flow.release = this.drains.opened(endpoint.taskId, () => this.closeFlow(flow));
    flow.forwardingSince = Date.now();
    for (const datagram of flow.unanswered ?? []) {
      task.bytesIn += datagram.length;
      backend.send(datagram);
    }
  }

  private onAnswer(flow: Flow, endpoint: Endpoint, answer: Buffer): void {
    if (flow.state !== 'forwarding' || flow.taskId !== endpoint.taskId) return;
    if (!flow.answered) {
      flow.answered = true;
      this.forgetUnanswered(flow);
      this.outliers.recordSuccess(endpoint.taskId);
    }
    flow.lastSeen = Date.now();
    this.counters.service.bytesOut += answer.length;
    if (flow.task !== undefined) flow.task.bytesOut += answer.length;
    this.socket?.send(answer, flow.port, flow.address, () => {});
  }

  /** The task could not be reached: counted, and the flow goes elsewhere if nothing of it was lost. */
  private onFailure(flow: Flow, service: ServiceEndpoints, endpoint: Endpoint, err: Error | undefined): void {
    const wasForwarding = flow.state === 'forwarding';
    this.endBackend(flow);
    if (!(err instanceof TaskDrainingError)) {
      this.picker.failed(
        service,
        endpoint.taskId,
        `udp to task ${endpoint.taskId} of ${service.serviceName} failed: ${err?.message}`,
      );
    }
    // Answered already, sent more than was kept, or sent too long ago to send again: the flow ends here.
    const stale = wasForwarding && Date.now() - flow.forwardingSince > RETRY_WINDOW_MS;
    if (flow.answered || stale || (wasForwarding && flow.unanswered === undefined)) {
      this.closeFlow(flow);
      return;
    }
    this.attempt(flow);
  }

  /** Drops the flow's tie to its task (socket or stream, counters, drain), leaving the flow itself. */
  private endBackend(flow: Flow): void {
    flow.abort?.abort(new Error('flow closed'));
    flow.abort = undefined;
    flow.closeBackend?.();
    flow.closeBackend = undefined;
    flow.send = undefined;
    if (flow.task !== undefined) flow.task.connectionsActive--;
    flow.task = undefined;
    flow.taskId = undefined;
    flow.release?.();
    flow.release = undefined;
  }

  private closeFlow(flow: Flow): void {
    if (flow.state === 'closed') return;
    this.endBackend(flow);
    this.forgetUnanswered(flow);
    flow.state = 'closed';
    this.flows.delete(flow.key);
    this.counters.service.connectionsActive--;
    if (this.flows.size < this.maxFlows) this.overflowLogged = false;
  }

  /** Ends the flows idle for idleTimeoutMs; forgets what flows kept past their retry window. */
  private sweep(): void {
    const now = Date.now();
    const cutoff = now - this.idleTimeoutMs;
    for (const flow of [...this.flows.values()]) {
      if (flow.lastSeen <= cutoff) this.closeFlow(flow);
      else if (flow.state === 'forwarding' && now - flow.forwardingSince > RETRY_WINDOW_MS) this.forgetUnanswered(flow);
    }
  }
}
