// The mesh hop's transport: one long-lived libp2p stream per pair of nodes, carrying every forwarded connection
// between them as an HTTP/2 stream (node:http2, i.e. nghttp2: a hardened multiplexer with per-stream flow control).
//
// Why not a libp2p stream per connection (what /swarmd/lb/1 did): each yamux frame is one Noise message and one
// socket write, and yamux sends a window update after every data frame, so a small request cost ~440 µs of CPU
// across the two daemons (npm run bench -- lb, daemon-mesh). HTTP/2 coalesces the frames of all connections
// written in one turn of the event loop into one write on the tunnel, hence one Noise message and one syscall for
// many requests, and grants flow-control window in large steps. Encryption and authentication are still the
// mesh's: the tunnel is an ordinary protected libp2p stream.
//
// Each forwarded connection is a CONNECT stream whose bytes are exactly what /swarmd/lb/1 carried (header, status
// byte, then the connection's bytes; see remote.ts), so serveRemote and the forwarder do not know which carries them.
import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  connect,
  constants,
  createServer,
  type Http2Server,
  type Http2Session,
  type ServerHttp2Stream,
  type Settings,
} from 'node:http2';
import type { Duplex } from 'node:stream';
import { noTunnels, type TunnelPath, type TunnelPathCounts } from './data-path.ts';

/**
 * Per-stream window: what one connection may have in flight towards a slow reader. HTTP/2's default (64 KiB) would
 * stall a fast transfer on a 1 ms hop; larger costs nothing until used.
 */
const STREAM_WINDOW_BYTES = 1024 * 1024;
/** The whole tunnel's window: shared by every connection between the two nodes. */
const SESSION_WINDOW_BYTES = 32 * 1024 * 1024;
/** Opening the libp2p stream of a tunnel (a dial to the peer included). */
const TUNNEL_OPEN_TIMEOUT_MS = 10_000;
/**
 * How often the dialing side pings a tunnel, and how long it waits for the answer before it drops the tunnel. A
 * peer that vanished without closing its connections (power cut, a cable pulled) is noticed within about this
 * much: the mesh notices for its own streams, a data path connection (data-path.ts) is plain TCP and would only
 * notice once the kernel gives up retransmitting, many minutes later.
 */
export const PING_INTERVAL_MS = 10_000;
export const PING_TIMEOUT_MS = 10_000;

export interface TunnelPing {
  intervalMs: number;
  timeoutMs: number;
}
/** Forwarded connections open at once between two nodes, per direction. */
export const TUNNEL_MAX_STREAMS = 4096;

const SETTINGS: Settings = {
  initialWindowSize: STREAM_WINDOW_BYTES,
  maxConcurrentStreams: TUNNEL_MAX_STREAMS,
  // Our CONNECT requests carry one pseudo-header each; nothing needs more.
  maxHeaderListSize: 4096,
  enablePush: false,
};

const SESSION_OPTIONS = {
  settings: SETTINGS,
  // nghttp2 refuses new streams once a session buffers this much (MiB): bounds a peer that never reads.
  maxSessionMemory: 64,
  // The tunnel is idle between bursts for as long as it likes; a dead peer is noticed by libp2p.
  maxOutstandingPings: 1,
};

/** Grows the session's receive window; a session destroyed meanwhile (its tunnel refused, say) is left alone. */
function widenWindow(session: Http2Session): void {
  if (session.destroyed) return;
  try {
    session.setLocalWindowSize(SESSION_WINDOW_BYTES);
  } catch {
    // Closed between the check and the call: it will not carry anything anyway.
  }
}

/** Resolves or rejects as `promise` does, or rejects with the signal's reason as soon as it fires. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** Opens a new tunnel (a libp2p byte stream of the tunnel protocol) to a peer. */
export type OpenTunnel = (peerId: string, signal: AbortSignal) => Promise<Duplex>;

export type TunnelLog = (message: string) => void;

/** The ingress side: one HTTP/2 client session per peer, opened on first use and again after it closes. */
export class TunnelDialer {
  private readonly sessions = new Map<string, Promise<ClientHttp2Session>>();
  private readonly openTunnel: OpenTunnel;
  private readonly log: TunnelLog;
  private readonly ping: TunnelPing;
  private closed = false;

  constructor(
    openTunnel: OpenTunnel,
    log: TunnelLog = () => {},
    ping: TunnelPing = { intervalMs: PING_INTERVAL_MS, timeoutMs: PING_TIMEOUT_MS },
  ) {
    this.openTunnel = openTunnel;
    this.log = log;
    this.ping = ping;
  }

  /** A new forwarded connection to the peer, `header` sent first; resolves once the stream is open. */
  async dial(peerId: string, header: Buffer, signal: AbortSignal): Promise<Duplex> {
    signal.throwIfAborted();
    let session = await untilAborted(this.session(peerId), signal);
    // Closed since it was opened (its peer went away): the next connection must not fail for it.
    if (session.closed || session.destroyed) {
      this.sessions.delete(peerId);
      session = await untilAborted(this.session(peerId), signal);
    }
    signal.throwIfAborted();
    const stream: ClientHttp2Stream = session.request(
      { [constants.HTTP2_HEADER_METHOD]: constants.HTTP2_METHOD_CONNECT, [constants.HTTP2_HEADER_AUTHORITY]: 'task' },
      { endStream: false },
    );
    // The client left while the tunnel was opening or later: the stream is reset, the far end lets go of the task.
    const onAbort = () => stream.destroy(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    stream.once('close', () => signal.removeEventListener('abort', onAbort));
    stream.write(header);
    return stream;
  }

  /** Tunnels open or being opened now. */
  get openCount(): number {
    return this.sessions.size;
  }

  /** Closes every tunnel; their forwarded connections are cut. */
  close(): void {
    this.closed = true;
    for (const pending of this.sessions.values())
      pending.then(
        (s) => s.destroy(),
        () => {},
      );
    this.sessions.clear();
  }

  private session(peerId: string): Promise<ClientHttp2Session> {
    if (this.closed) return Promise.reject(new Error('the load balancer is shutting down'));
    let pending = this.sessions.get(peerId);
    if (pending === undefined) {
      pending = this.connect(peerId);
      this.sessions.set(peerId, pending);
      const created = pending;
      const forget = () => {
        if (this.sessions.get(peerId) === created) this.sessions.delete(peerId);
      };
      created.then((session) => session.once('close', forget), forget);
    }
    return pending;
  }

  private async connect(peerId: string): Promise<ClientHttp2Session> {
    // Not the caller's signal: the tunnel outlives the connection that happened to open it, and other connections
    // may be waiting for it too.
    const transport = await this.openTunnel(peerId, AbortSignal.timeout(TUNNEL_OPEN_TIMEOUT_MS));
    // Its errors reach the session (logged there); this keeps one after the session is gone from being unhandled.
    transport.on('error', () => {});
    return new Promise((resolve, reject) => {
      const session = connect('http://swarmd-lb', { ...SESSION_OPTIONS, createConnection: () => transport });
      session.on('error', (err) => {
        this.log(`lb: tunnel to ${peerId} failed: ${err.message}`);
        reject(err);
      });
      session.once('close', () => {
        transport.destroy();
        reject(new Error(`tunnel to ${peerId} closed`));
      });
      session.once('connect', () => {
        widenWindow(session);
        keepAlive(session, peerId, this.ping, this.log);
        resolve(session);
      });
    });
  }
}

/** Pings the session every intervalMs; destroys it when an answer is timeoutMs late. */
function keepAlive(session: ClientHttp2Session, peerId: string, ping: TunnelPing, log: TunnelLog): void {
  let waiting: NodeJS.Timeout | undefined;
  const interval = setInterval(() => {
    if (waiting !== undefined || session.destroyed) return;
    waiting = setTimeout(() => {
      log(`lb: tunnel to ${peerId} did not answer a ping in ${ping.timeoutMs} ms; closing it`);
      session.destroy();
    }, ping.timeoutMs);
    waiting.unref();
    const sent = session.ping((err) => {
      clearTimeout(waiting);
      waiting = undefined;
      if (err !== null && !session.destroyed) session.destroy(err);
    });
    if (!sent) {
      clearTimeout(waiting);
      waiting = undefined;
    }
  }, ping.intervalMs);
  // Neither timer holds the process open.
  interval.unref();
  session.once('close', () => {
    clearInterval(interval);
    clearTimeout(waiting);
  });
}

/**
 * The task's node side: serves tunnels opened by other nodes, handing each forwarded connection (a Duplex that
 * starts with the remote header) to `onStream`.
 */
export class TunnelServer {
  private readonly server: Http2Server;
  private readonly transports = new Map<Duplex, TunnelPath>();

  constructor(onStream: (stream: Duplex) => void, log: TunnelLog = () => {}) {
    this.server = createServer(SESSION_OPTIONS);
    this.server.on('session', (session) => {
      session.once('connect', () => widenWindow(session));
      session.on('error', (err) => log(`lb: tunnel session failed: ${err.message}`));
    });
    this.server.on('stream', (stream: ServerHttp2Stream, headers) => {
      if (headers[constants.HTTP2_HEADER_METHOD] !== constants.HTTP2_METHOD_CONNECT) {
        // Closing with an error code makes the stream emit it: handled here, or it would take the daemon down.
        stream.on('error', () => {});
        stream.close(constants.NGHTTP2_REFUSED_STREAM);
        return;
      }
      // The answer is the status byte inside the stream; the HTTP/2 response only opens the way back.
      stream.respond({ [constants.HTTP2_HEADER_STATUS]: 200 }, { endStream: false });
      onStream(stream);
    });
    this.server.on('sessionError', (err) => log(`lb: tunnel session failed: ${err.message}`));
  }

  /**
   * Serves one tunnel until it closes: an inbound libp2p byte stream of the tunnel protocol (path 'mesh'), or a
   * data path connection (data-path.ts).
   */
  serve(transport: Duplex, path: TunnelPath = 'mesh'): void {
    transport.on('error', () => {});
    this.transports.set(transport, path);
    transport.once('close', () => this.transports.delete(transport));
    this.server.emit('connection', transport);
  }

  /** Tunnels being served now, by path. */
  counts(): TunnelPathCounts {
    const counts = noTunnels();
    for (const path of this.transports.values()) counts[path]++;
    return counts;
  }

  close(): void {
    for (const transport of this.transports.keys()) transport.destroy();
    this.transports.clear();
  }
}
