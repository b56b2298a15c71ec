// The ingress for one published port: accepts client connections, picks a task for each, and forwards the bytes.
// A task on this node is reached by a direct TCP connect to its address; a task elsewhere through dialRemote (a
// mesh stream to its node, served there by serveRemote in remote.ts).
//
// Retries: client sockets are accepted paused (pauseOnConnect), so nothing of the client's is read until a backend
// is connected and, for the mesh path, its node has answered that the task accepted. A failed connect therefore
// never loses a byte, and the connection is tried on another task, up to maxAttempts. Each failure goes to outlier
// detection. Once bytes flow, a failure ends the connection: it cannot be replayed.
//
// Moving the bytes: once a local task is connected, both sockets go to the native relay (native-relay.ts), whose
// threads move the bytes from then on. A task on another node is reached with the relay too where that node's
// relay serves its data path (native-hop.ts): the client's socket is joined to the hop the relay set up. Where the
// relay is not built, or through the HTTP/2 tunnel (a stream, not a socket), pump.ts does it in this thread.
//
// Nothing here reads the store: `services()` gives the current endpoint table for the port each time a connection
// arrives, so an update by the control plane applies to the next connection.
import { type AddressInfo, createServer, isIP, type Server, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Endpoint, ServiceEndpoints, TaskId } from './endpoints.ts';
import type { NativeHop } from './native-hop.ts';
import { type NativeRelay, nativeRelay, type RelayedConnection, type RelayMode } from './native-relay.ts';
import { PortIngress, type PortIngressOptions } from './port-ingress.ts';
import { encodeProxyV2, type ProxyAddresses } from './proxy-protocol.ts';
import { LINGER_MS, pump } from './pump.ts';
import { connectTask, encodeRemoteHeader, openTaskStream, REMOTE_STATUS, TaskDrainingError } from './remote.ts';
import type { ServiceStats, TaskCounters } from './stats.ts';

export { type DialRemote, serveRemote } from './remote.ts';

export interface IngressOptions extends PortIngressOptions {
  /** How a connection to a local task moves its bytes; default native where the relay is built, else js. */
  relay?: RelayMode;
}

type ConnState = 'connecting' | 'forwarding' | 'closed';

interface Conn {
  client: Socket;
  state: ConnState;
  /** The socket or stream of the attempt in progress, to abort if the client leaves. */
  pending: Duplex | undefined;
  abort: AbortController | undefined;
  tried: Set<TaskId>;
  attempts: number;
  task: TaskCounters | undefined;
  /** Tells the drain tracker this forwarded connection is closed. */
  release: (() => void) | undefined;
  /** Set once the native relay holds the connection (the JS sockets are closed then). */
  relayed: RelayedConnection | undefined;
  /** Parts of client.bytesRead / bytesWritten already added to the counters. */
  countedIn: number;
  countedOut: number;
}

export class Ingress extends PortIngress {
  private readonly options: IngressOptions;
  private readonly server: Server;
  private readonly conns = new Set<Conn>();
  private readonly relay: NativeRelay | undefined;

  constructor(options: IngressOptions) {
    super(options, 'tcp');
    this.options = options;
    const relay = options.relay === 'js' ? undefined : nativeRelay();
    this.relay = typeof relay === 'string' ? undefined : relay;
    this.server = createServer(
      // Clients stay unread until a backend is ready: what makes retrying safe. noDelay: each chunk is forwarded
      // as it comes, so Nagle on our side would only add latency.
      { pauseOnConnect: true, allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 },
      (client) => this.onConnection(client),
    );
    // Accept errors (EMFILE and the like) must not take the daemon down.
    this.server.on('error', (err) => this.log(`lb: ingress on port ${this.listeningPort}: ${err.message}`));
  }

  /** Starts listening; resolves with the bound address (the real port when 0 was asked). */
  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      const opts: { port: number; host?: string; reusePort?: boolean } = { port: this.options.port };
      if (this.options.host !== undefined) opts.host = this.options.host;
      if (this.options.reusePort) opts.reusePort = true;
      this.server.listen(opts, () => {
        this.server.off('error', onError);
        const address = this.server.address() as AddressInfo;
        this.listeningPort = address.port;
        resolve(address);
      });
    });
  }

  /** Counters now, bytes of open connections included. Tasks gone from the table with nothing open are dropped after. */
  stats(): ServiceStats {
    for (const conn of this.conns) this.countBytes(conn);
    return this.counters.snapshot(this.listeningPort, this.currentService());
  }

  /** Stops listening and cuts every open connection. */
  close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const conn of this.conns) this.destroyConn(conn);
    return closed;
  }

  private onConnection(client: Socket): void {
    const conn: Conn = {
      client,
      state: 'connecting',
      pending: undefined,
      abort: undefined,
      tried: new Set(),
      attempts: 0,
      task: undefined,
      release: undefined,
      relayed: undefined,
      countedIn: 0,
      countedOut: 0,
    };
    // Errors before forwarding starts (pump adds its own handler then): the client is simply gone.
    client.on('error', () => this.destroyConn(conn));
    client.on('close', () => this.onClientClose(conn));
    this.conns.add(conn);
    this.counters.service.connectionsTotal++;
    this.counters.service.connectionsActive++;
    this.attempt(conn);
  }

  private attempt(conn: Conn): void {
    if (conn.state !== 'connecting') return;
    const next = this.nextAttempt(conn);
    if (next === undefined) {
      this.destroyConn(conn);
      return;
    }
    const { service, endpoint } = next;
    const onResult = (err: Error | undefined, backend: Duplex | undefined, early?: Buffer) => {
      conn.pending = undefined;
      conn.abort = undefined;
      if (conn.state !== 'connecting') {
        backend?.destroy();
        return;
      }
      if (err !== undefined || backend === undefined) {
        this.onConnectFailure(conn, service, endpoint, err);
        return;
      }
      this.outliers.recordSuccess(endpoint.taskId);
      if (this.drains.isDraining(endpoint.taskId)) {
        // drain() began while this connect was under way and may already have resolved: go elsewhere.
        backend.destroy();
        this.attempt(conn);
        return;
      }
      this.startForwarding(conn, endpoint.taskId, backend, early);
    };
    if (endpoint.nodeId === this.nodeId) {
      const readBy = this.relay === undefined ? 'js' : 'relay';
      conn.pending = connectTask(endpoint.address, this.connectTimeoutMs, readBy, (err, socket) => {
        if (socket !== undefined && service.proxyProtocol) socket.write(encodeProxyV2(clientAddresses(conn.client)));
        onResult(err, socket);
      });
    } else {
      this.connectRemote(conn, endpoint, service.proxyProtocol, onResult);
    }
  }

  private connectRemote(
    conn: Conn,
    endpoint: Endpoint,
    proxyProtocol: boolean,
    onResult: (err: Error | undefined, backend: Duplex | undefined, early?: Buffer) => void,
  ): void {
    const dialRemote = this.options.dialRemote;
    if (dialRemote === undefined) {
      onResult(new Error(`task ${endpoint.taskId} is on node ${endpoint.nodeId} and no mesh dialer is set`), undefined);
      return;
    }
    const header = encodeRemoteHeader({
      taskId: endpoint.taskId,
      ...(proxyProtocol ? { client: clientAddresses(conn.client) } : {}),
    });
    conn.abort = new AbortController();
    const dialNative = this.relay === undefined ? undefined : this.options.dialNative;
    if (dialNative === undefined) {
      openTaskStream(dialRemote, endpoint, header, this.connectTimeoutMs, conn.abort, onResult);
      return;
    }
    const abort = conn.abort;
    const timer = setTimeout(
      () => abort.abort(new Error(`native hop to task ${endpoint.taskId} timed out`)),
      this.connectTimeoutMs,
    );
    dialNative(endpoint, header, abort.signal).then(
      (hop) => {
        clearTimeout(timer);
        // This peer is reached through the tunnel (native-hop.ts says when).
        if (hop === undefined) openTaskStream(dialRemote, endpoint, header, this.connectTimeoutMs, abort, onResult);
        else this.onNativeHop(conn, endpoint, hop, onResult);
      },
      (err: unknown) => {
        clearTimeout(timer);
        onResult(err instanceof Error ? err : new Error(String(err)), undefined);
      },
    );
  }

  /** A native hop is set up: its status byte says whether the task's node connected to the task. */
  private onNativeHop(
    conn: Conn,
    endpoint: Endpoint,
    hop: NativeHop,
    onResult: (err: Error | undefined, backend: Duplex | undefined) => void,
  ): void {
    if (conn.state !== 'connecting' || hop.status !== REMOTE_STATUS.ok) {
      hop.parked.drop();
      // onResult does nothing for a connection that is gone.
      const refused =
        hop.status === REMOTE_STATUS.draining
          ? new TaskDrainingError(endpoint)
          : new Error(`node ${endpoint.nodeId} refused task ${endpoint.taskId} (status ${hop.status})`);
      onResult(refused, undefined);
      return;
    }
    conn.pending = undefined;
    conn.abort = undefined;
    this.outliers.recordSuccess(endpoint.taskId);
    if (this.drains.isDraining(endpoint.taskId)) {
      hop.parked.drop();
      this.attempt(conn);
      return;
    }
    this.countForwarding(conn, endpoint.taskId);
    conn.relayed = hop.parked.join(conn.client, undefined, LINGER_MS, () => this.onRelayEnd(conn));
    if (conn.relayed !== undefined) return;
    // The client's socket cannot be handed over (it closed meanwhile): nothing was sent either way.
    hop.parked.drop();
    this.destroyConn(conn);
  }

  private onConnectFailure(conn: Conn, service: ServiceEndpoints, endpoint: Endpoint, err: Error | undefined): void {
    // Its node is stopping it and our table does not say so yet: nothing wrong with the task, try the next one.
    if (err instanceof TaskDrainingError) {
      this.attempt(conn);
      return;
    }
    this.picker.failed(
      service,
      endpoint.taskId,
      `connect to task ${endpoint.taskId} of ${service.serviceName} failed: ${err?.message}`,
    );
    this.attempt(conn);
  }

  /** The connection forwards to the task from now on: counted, and drained with it. */
  private countForwarding(conn: Conn, taskId: TaskId): void {
    conn.state = 'forwarding';
    const task = this.counters.task(taskId);
    conn.task = task;
    task.connectionsTotal++;
    task.connectionsActive++;
    conn.release = this.drains.opened(taskId, () => this.destroyConn(conn));
  }

  private startForwarding(conn: Conn, taskId: TaskId, backend: Duplex, early: Buffer | undefined): void {
    conn.pending = backend;
    this.countForwarding(conn, taskId);
    if (early !== undefined) conn.client.write(early);
    // A local task's socket: the native relay takes both (unless a write, the PROXY header, is still queued).
    if (this.relay !== undefined && backend instanceof Socket) {
      conn.relayed = this.relay.handOver(conn.client, backend, LINGER_MS, () => this.onRelayEnd(conn));
      if (conn.relayed !== undefined) return;
    }
    pump(conn.client, backend, () => this.destroyConn(conn));
  }

  private onRelayEnd(conn: Conn): void {
    // As with pump, how it ended does not matter here: bytes flowed, so nothing is retried or held against the task.
    // Already closed (cut by a drain or close()): only the last bytes are left to count.
    this.countBytes(conn);
    this.destroyConn(conn);
  }

  private onClientClose(conn: Conn): void {
    // While connecting: stop the attempt. While forwarding, pump sees the close and cleans up the backend.
    if (conn.state === 'connecting') this.destroyConn(conn);
  }

  private destroyConn(conn: Conn): void {
    if (conn.state === 'closed') return;
    const wasForwarding = conn.state === 'forwarding';
    conn.state = 'closed';
    conn.abort?.abort(new Error('client connection closed'));
    conn.relayed?.cut();
    conn.pending?.destroy();
    conn.client.destroy();
    this.conns.delete(conn);
    this.counters.service.connectionsActive--;
    this.countBytes(conn);
    if (!wasForwarding || conn.task === undefined) return;
    conn.task.connectionsActive--;
    conn.release?.();
  }

  private countBytes(conn: Conn): void {
    const relayed = conn.relayed?.bytes();
    const read = conn.client.bytesRead + (relayed?.aToB ?? 0);
    const written = conn.client.bytesWritten + (relayed?.bToA ?? 0);
    const dIn = read - conn.countedIn;
    const dOut = written - conn.countedOut;
    if (dIn === 0 && dOut === 0) return;
    conn.countedIn = read;
    conn.countedOut = written;
    this.counters.service.bytesIn += dIn;
    this.counters.service.bytesOut += dOut;
    if (conn.task !== undefined) {
      conn.task.bytesIn += dIn;
      conn.task.bytesOut += dOut;
    }
  }
}

/** The client connection as PROXY protocol describes it: the client's address and the one it connected to. */
function clientAddresses(client: Socket): ProxyAddresses {
  return {
    sourceAddress: plainIp(client.remoteAddress),
    sourcePort: client.remotePort ?? 0,
    destinationAddress: plainIp(client.localAddress),
    destinationPort: client.localPort ?? 0,
  };
}

/**
 * An address the PROXY header can carry: without an IPv6 zone (it has no room for one), and 0.0.0.0 for a socket
 * already closed, so that encoding never throws on the connection path.
 */
function plainIp(address: string | undefined): string {
  if (address === undefined) return '0.0.0.0';
  const zone = address.indexOf('%');
  const ip = zone >= 0 ? address.slice(0, zone) : address;
  return isIP(ip) === 0 ? '0.0.0.0' : ip;
}
