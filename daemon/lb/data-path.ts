// The data path: load balancer tunnels (tunnel.ts) over a direct TLS 1.3 connection between two nodes, keyed over
// the mesh, rather than inside a libp2p stream.
//
// Why: inside the mesh every tunnel write goes through yamux framing, a Noise message and libp2p's stream adapters,
// all in JavaScript, and HTTP/2 has to run over a JS stream wrapper. Over a TLS socket of its own, encryption
// (OpenSSL) and HTTP/2 (nghttp2) both run natively on the socket. Measured on the lb bench's two-process hop (2
// cores, wrk -c64): ~15,000 req/s over TLS against ~8,000 for the same tunnel in a libp2p stream. Docker Swarm's
// equivalent is its data path (VXLAN on --data-path-port, unencrypted unless the overlay is created --opt
// encrypted); ours is always encrypted and needs no root.
//
// Keying: the dialer asks the peer over the mesh (PROTOCOLS.lbTicket, a protected protocol: members only) for a
// ticket: the data path's port, a random identity and a random 256-bit key. The ticket is good for one TLS 1.3
// handshake within TICKET_TTL_MS, with that key as the external PSK (psk_dhe_ke: an ECDHE exchange too, so a key
// that leaks later does not open recorded traffic). Both ends thereby prove they hold a key that only went over the
// mesh's authenticated, encrypted stream between the two members: nothing else can complete a handshake, and no
// certificates are needed.
//
// Where the direct connection cannot be made (NAT, a firewall, a peer that turned it off or predates it), the tunnel
// goes through the mesh as before, and the peer is not tried directly again for FALLBACK_MS. A data path that is
// merely silent (a firewall that drops) would hold the first tunnel for the whole handshake timeout: after
// HEAD_START_MS the mesh is tried beside it, and whichever opens first carries the tunnel.
import { randomBytes } from 'node:crypto';
import { type AddressInfo, createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect, createServer, type Server, type TLSSocket, type TlsOptions } from 'node:tls';
import type { NativeRelay, ParkedConnection } from './native-relay.ts';
import type { OpenTunnel } from './tunnel.ts';

export const TICKET_KEY_BYTES = 32;
/** Hex of 16 random bytes. */
const IDENTITY_BYTES = 16;
/** A ticket not used within this long is forgotten. */
const TICKET_TTL_MS = 30_000;
/**
 * How long a dialer reuses a ticket for native hops (native-hop.ts): well inside TICKET_TTL_MS, so a handshake
 * started near the end still finds its key.
 */
export const TICKET_REUSE_MS = 20_000;
/** Tickets issued and not used yet, at most: a member asking in a loop cannot grow the table. */
const MAX_OUTSTANDING_TICKETS = 1024;
/** For the TCP connect and the TLS handshake together, either side. */
export const HANDSHAKE_TIMEOUT_MS = 5000;
/** How long a peer whose data path failed is reached through the mesh only. */
export const FALLBACK_MS = 5 * 60_000;
/**
 * How long the data path has (ticket, TCP connect and TLS handshake: three round trips) before the mesh is tried
 * beside it: ample on a LAN or a WAN of 100-200 ms round trips, and far below HANDSHAKE_TIMEOUT_MS.
 */
export const HEAD_START_MS = 1000;
/** PSK suites are the SHA-256 ones; AES-GCM where the CPU has AES instructions, ChaCha20 otherwise. */
const TLS_OPTIONS: Pick<TlsOptions, 'minVersion' | 'maxVersion' | 'ciphers' | 'ALPNProtocols'> = {
  minVersion: 'TLSv1.3',
  maxVersion: 'TLSv1.3',
  ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256',
  ALPNProtocols: ['h2'],
};

/** What the dialer needs for one connection to a peer's data path. */
export interface DataPathTicket {
  host: string;
  port: number;
  identity: string;
  key: Uint8Array;
  /** The peer's native relay serves its data path: the key is good for native hops until it expires. */
  relay?: true;
  /** And it serves muxes (native/mux.c): many forwarded connections over one TLS connection. */
  mux?: true;
}

/**
 * The ticket as it goes over the mesh: the dialer knows the host already (it is the peer's mesh address). A daemon
 * that predates `relay` ignores it, and uses the ticket once for a tunnel.
 */
export type TicketReply = { port: number; identity: string; key: Uint8Array; relay?: true; mux?: true } | { off: true };

/** Gets a ticket for a peer's data path, or undefined when the peer has none (or is reached through a relay). */
export type FetchTicket = (peerId: string, signal: AbortSignal) => Promise<DataPathTicket | undefined>;

/** Checks a ticket reply from a peer (any shape may arrive): a clear error names what is wrong. */
export function parseTicketReply(value: unknown): TicketReply {
  if (typeof value !== 'object' || value === null) throw new Error('data path ticket: not an object');
  const reply = value as Record<string, unknown>;
  if (reply.off === true) return { off: true };
  const { port, identity, key } = reply;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)
    throw new Error(`data path ticket: port must be 1-65535, got ${String(port)}`);
  if (typeof identity !== 'string' || !/^[0-9a-f]{32}$/.test(identity))
    throw new Error('data path ticket: identity must be 32 hex characters');
  if (!(key instanceof Uint8Array) || key.length !== TICKET_KEY_BYTES)
    throw new Error(`data path ticket: key must be ${TICKET_KEY_BYTES} bytes`);
  if (reply.relay !== true) return { port, identity, key };
  return reply.mux === true ? { port, identity, key, relay: true, mux: true } : { port, identity, key, relay: true };
}

interface IssuedTicket {
  key: Buffer;
  peerId: string;
  expires: number;
}

export interface DataPathServerOptions {
  host: string;
  /** 0: any free port. */
  port: number;
  /** A tunnel from `peerId` is up (the handshake proved it holds the key issued to that peer). */
  onTunnel: (socket: TLSSocket, peerId: string) => void;
  /**
   * Where the native relay is built: it serves native hops (native-hop.ts) on this port too, and tickets say so.
   * Each set-up hop goes to onNativeHop with its remote header (remote.ts's serveNativeHop).
   */
  native?: { relay: NativeRelay; onNativeHop: (parked: ParkedConnection, header: Buffer) => void };
  log: (message: string) => void;
}

/**
 * The accepting side: a TCP listener whose connections are either native hops, set up by the relay, or tunnels:
 * TLS connections (Node's TLS server) that admit one handshake per ticket issued.
 */
export class DataPathServer {
  private readonly opts: DataPathServerOptions;
  private readonly server: NetServer;
  private readonly tls: Server;
  /** By identity; a Map keeps issue order, so the oldest is first to go when full. */
  private readonly tickets = new Map<string, IssuedTicket>();
  private readonly sockets = new Set<Socket>();
  private boundPort = 0;
  private muxesOpen = 0;

  constructor(opts: DataPathServerOptions) {
    this.opts = opts;
    // Paused: the relay looks at the first bytes without reading them, then a tunnel is read by Node's TLS.
    this.server = createNetServer({ pauseOnConnect: true, noDelay: true }, (socket) => this.onConnection(socket));
    this.server.on('error', (err) => this.opts.log(`lb: data path listener: ${err.message}`));
    this.tls = createServer({
      ...TLS_OPTIONS,
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
      pskCallback: (socket, identity) => {
        const ticket = this.take(identity);
        if (ticket === undefined) return null;
        peerOf.set(socket, ticket.peerId);
        return ticket.key;
      },
    });
    this.tls.on('secureConnection', (socket: TLSSocket) => {
      const peerId = peerOf.get(socket);
      if (peerId === undefined) {
        socket.destroy();
        return;
      }
      socket.setNoDelay(true);
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      this.opts.onTunnel(socket, peerId);
    });
    // Failed handshakes (no ticket, a wrong key, garbage) are what a scanner or a stale peer produces: not logged
    // one by one, the socket is simply gone.
    this.tls.on('tlsClientError', (_err, socket) => socket.destroy());
  }

  private onConnection(socket: Socket): void {
    socket.on('error', () => {});
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const native = this.opts.native;
    if (native === undefined) {
      this.tls.emit('connection', socket);
      return;
    }
    // The same bound as a tunnel's handshake: a peer that connects and says nothing is cut.
    const timer = setTimeout(() => setup.cut(), HANDSHAKE_TIMEOUT_MS);
    // A mux's streams are set up in the relay like native hops, and served the same way.
    const onStream = (parked: ParkedConnection, header: Buffer) => native.onNativeHop(parked, header);
    const setup = native.relay.accept(
      socket,
      (outcome, parked) => {
        clearTimeout(timer);
        // A mux needs nothing more here: its streams go to onStream.
        if (outcome.kind === 'mux') {
          this.muxesOpen++;
          outcome.whenEnded(() => this.muxesOpen--);
        } else if (outcome.kind === 'legacy') this.tls.emit('connection', socket);
        else if (outcome.kind === 'ready' && parked !== undefined && outcome.header !== undefined)
          native.onNativeHop(parked, outcome.header);
        // A failed set-up (a wrong or expired key, garbage, a timeout) is what a scanner or a stale peer produces: not
        // logged one by one, as for tunnels.
      },
      onStream,
    );
  }

  /** Binds; resolves with the port (the one asked for, or the free one picked). */
  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.off('error', reject);
        this.boundPort = (this.server.address() as AddressInfo).port;
        resolve(this.boundPort);
      });
    });
  }

  get port(): number {
    return this.boundPort;
  }

  /** Muxes other nodes opened to this one, open now. */
  get muxes(): number {
    return this.muxesOpen;
  }

  /** A ticket for one handshake by `peerId`, to send it over the mesh. */
  issue(peerId: string, now = Date.now()): Exclude<TicketReply, { off: true }> {
    this.sweep(now);
    while (this.tickets.size >= MAX_OUTSTANDING_TICKETS) this.tickets.delete(this.tickets.keys().next().value!);
    const identity = randomBytes(IDENTITY_BYTES).toString('hex');
    const key = randomBytes(TICKET_KEY_BYTES);
    this.tickets.set(identity, { key, peerId, expires: now + TICKET_TTL_MS });
    if (this.opts.native === undefined) return { port: this.boundPort, identity, key };
    this.opts.native.relay.addKey(identity, key, TICKET_TTL_MS);
    return { port: this.boundPort, identity, key, relay: true, mux: true };
  }

  /** Tickets issued and not used yet (for tests). */
  get outstanding(): number {
    return this.tickets.size;
  }

  close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    this.tickets.clear();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private take(identity: string, now = Date.now()): IssuedTicket | undefined {
    const ticket = this.tickets.get(identity);
    this.tickets.delete(identity);
    return ticket !== undefined && ticket.expires > now ? ticket : undefined;
  }

  private sweep(now: number): void {
    for (const [identity, ticket] of this.tickets) {
      if (ticket.expires > now) break; // issue order is expiry order
      this.tickets.delete(identity);
    }
  }
}

/** Which member a handshake's ticket was issued to, from pskCallback to 'secureConnection'. */
const peerOf = new WeakMap<TLSSocket, string>();

/** Connects to a peer's data path with a ticket; resolves once the handshake is done. */
export function dialDataPath(ticket: DataPathTicket, signal: AbortSignal): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      ...TLS_OPTIONS,
      host: ticket.host,
      port: ticket.port,
      pskCallback: () => ({ psk: Buffer.from(ticket.key), identity: ticket.identity }),
      // The PSK authenticates the server; there is no certificate to check.
      checkServerIdentity: () => undefined,
    });
    socket.setNoDelay(true);
    const fail = (err: Error) => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const timeout = setTimeout(
      () => fail(new Error(`data path ${ticket.host}:${ticket.port}: no handshake in ${HANDSHAKE_TIMEOUT_MS} ms`)),
      HANDSHAKE_TIMEOUT_MS,
    );
    const onAbort = () => fail(signal.reason as Error);
    const cleanup = () => {
      clearTimeout(timeout);
      signal.removeEventListener('abort', onAbort);
      socket.off('error', fail);
    };
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      cleanup();
      resolve(socket);
    });
  });
}

export type TunnelPath = 'direct' | 'mesh';

/**
 * Tunnels through each path open now, native hops (native-hop.ts: one per forwarded connection, a mux stream or a
 * TCP connection of its own) and muxes (native/mux.c: one TLS connection per peer and relay thread).
 */
export type TunnelPathCounts = Record<TunnelPath | 'native' | 'mux', number>;

export function noTunnels(): TunnelPathCounts {
  return { direct: 0, mesh: 0, native: 0, mux: 0 };
}

export interface DirectFirst {
  open: OpenTunnel;
  counts(): TunnelPathCounts;
}

/**
 * Opens tunnels over the data path where the peer has one and it can be reached, else through the mesh (and then
 * through the mesh only for FALLBACK_MS). `fetchTicket` undefined: the mesh always.
 */
export function directFirst(
  fetchTicket: FetchTicket | undefined,
  openMesh: OpenTunnel,
  log: (message: string) => void,
  now: () => number = Date.now,
): DirectFirst {
  const meshOnlyUntil = new Map<string, number>();
  const counts = noTunnels();
  const track = (path: TunnelPath, transport: Duplex): Duplex => {
    counts[path]++;
    transport.once('close', () => counts[path]--);
    return transport;
  };
  const tryDirect = async (peerId: string, signal: AbortSignal): Promise<Duplex | undefined> => {
    if (fetchTicket === undefined) return undefined;
    try {
      const ticket = await fetchTicket(peerId, signal);
      if (ticket !== undefined) return await dialDataPath(ticket, signal);
    } catch (err) {
      if (signal.aborted) throw err;
      log(`lb: data path to ${peerId} failed (${(err as Error).message}); using the mesh for it`);
    }
    meshOnlyUntil.set(peerId, now() + FALLBACK_MS);
    return undefined;
  };
  return {
    async open(peerId, signal) {
      if (fetchTicket === undefined || (meshOnlyUntil.get(peerId) ?? 0) > now()) {
        return track('mesh', await openMesh(peerId, signal));
      }
      const direct = tryDirect(peerId, signal);
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => {
        timer = setTimeout(() => resolve('late'), HEAD_START_MS);
      });
      const first = await Promise.race([direct, late]).finally(() => clearTimeout(timer));
      if (first === 'late') {
        const opened = await firstOpened(direct, openMesh(peerId, signal));
        return track(opened.path, opened.transport);
      }
      return first !== undefined ? track('direct', first) : track('mesh', await openMesh(peerId, signal));
    },
    counts: () => ({ ...counts }),
  };
}

/**
 * The first of a data path attempt (undefined: it failed, and said why) and a mesh tunnel to open. The other is
 * left to finish: a data path that fails then is remembered (tryDirect), a late one closed; a late mesh tunnel too.
 * Rejects only when neither opens.
 */
function firstOpened(
  direct: Promise<Duplex | undefined>,
  mesh: Promise<Duplex>,
): Promise<{ path: TunnelPath; transport: Duplex }> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let failures = 0;
    let meshError: unknown;
    const failed = () => {
      if (++failures === 2 && !settled) reject(meshError ?? new Error('neither the data path nor the mesh opened'));
    };
    const opened = (path: TunnelPath, transport: Duplex) => {
      if (settled) {
        transport.destroy();
        return;
      }
      settled = true;
      resolve({ path, transport });
    };
    direct.then(
      (transport) => (transport === undefined ? failed() : opened('direct', transport)),
      () => failed(),
    );
    mesh.then(
      (transport) => opened('mesh', transport),
      (err: unknown) => {
        meshError = err;
        failed();
      },
    );
  });
}
