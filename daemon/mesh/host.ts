// The libp2p host every swarmd node runs: TCP, exactly one encryption (Noise, or TLS 1.3 when asked for), yamux,
// identify and ping, plus a private kad-dht when configured. Everything the swarm says to itself goes over framed
// streams on this host (framed-stream.ts).
//
// Gating happens per stream: protocols registered with `open: true` (the join protocol) serve anyone who completes
// the encrypted handshake; every other protocol asks authorize() first, with the PeerId the handshake proved. With no
// authorize() configured, only open protocols are served: a node that cannot yet tell members from strangers must
// not talk to strangers.

import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify } from '@libp2p/identify';
import type { Libp2p, PeerId, PrivateKey, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { ping } from '@libp2p/ping';
import { tcp } from '@libp2p/tcp';
import { CODE_P2P, type Multiaddr, multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';
import { byteStream } from './byte-stream.ts';
import { type FramedStream, type FramedStreamOptions, framedStream } from './framed-stream.ts';

export type MeshLogLevel = 'debug' | 'info' | 'warn';

export interface MeshDhtOptions {
  /** Per-swarm prefix, e.g. `/swarmd/<swarm id>`; the DHT protocol is `<prefix>/kad/1.0.0`, never the public one. */
  protocolPrefix: string;
  /** Answer DHT queries (managers) or only ask them (workers, edge nodes). */
  server: boolean;
  /** Multiaddrs with /p2p/<PeerId> of DHT servers to join through. */
  bootstrap: string[];
  /** How often to redial the bootstrap peers while none is connected. Default 30 s. */
  bootstrapIntervalMs?: number;
}

export interface MeshHostOptions {
  privateKey: PrivateKey;
  /** Where to listen, e.g. 127.0.0.1:2377; port 0 picks a free port. */
  listen: { host: string; port: number };
  /** The address others should dial, when it differs from the listening one (NAT, port forwarding). */
  advertise?: { host: string; port: number };
  /** Noise (default) or TLS 1.3. Only the chosen one is offered, so a peer using the other cannot connect. */
  encryption?: 'noise' | 'tls';
  /** A private kad-dht for finding peers' addresses; left out, findPeer() only consults the peer store. */
  dht?: MeshDhtOptions;
  /** Called for each inbound stream of a protected protocol before its handler runs; return an Error to refuse. */
  authorize?: (remotePeer: string, protocol: string) => Promise<Error | null> | Error | null;
  log?: (level: MeshLogLevel, msg: string) => void;
}

export type MeshStreamHandler = (stream: FramedStream, remotePeer: string) => Promise<void> | void;
/** A raw-bytes protocol's handler: it owns the Duplex (and must end or destroy it). */
export type MeshByteStreamHandler = (stream: Duplex, remotePeer: string) => void;

export interface MeshHandleOptions {
  /** Anyone may open it (the join protocol); otherwise authorize() decides. */
  open?: boolean;
  /** Largest frame accepted on this protocol. Default 4 MiB. */
  maxFrameBytes?: number;
  /** Concurrent inbound streams per connection for this protocol. Default 32 (libp2p's). */
  maxInboundStreams?: number;
}

export interface MeshHost {
  peerId: string;
  /** Addresses others can dial, each ending in /p2p/<peerId>. */
  multiaddrs(): string[];
  /**
   * Serves a protocol. The handler owns the stream while it runs; when it returns the stream is half-closed (the
   * remote reads the end), when it throws the stream is aborted. Keep the handler running for long-lived streams.
   */
  handle(protocol: string, handler: MeshStreamHandler, opts?: MeshHandleOptions): Promise<void>;
  /** Serves a protocol of raw bytes (the load balancer's mesh hop); authorize() decides as for framed ones. */
  handleBytes(protocol: string, handler: MeshByteStreamHandler, opts?: { maxInboundStreams?: number }): Promise<void>;
  /** Opens a raw-bytes stream to a PeerId. */
  openByteStream(
    peerId: string,
    protocol: string,
    opts?: { signal?: AbortSignal; maxOutboundStreams?: number },
  ): Promise<Duplex>;
  /** Opens a framed stream to a PeerId (dialing known addresses, or the DHT) or to a multiaddr. */
  openStream(
    target: string,
    protocol: string,
    opts?: { signal?: AbortSignal; maxFrameBytes?: number },
  ): Promise<{ stream: FramedStream; remotePeer: string; remoteIp: string | undefined }>;
  /** Adds addresses for a peer to the peer store (from the swarm's node table). */
  addPeerAddresses(peerId: string, multiaddrs: string[]): Promise<void>;
  /** Closes every connection to a peer (used when a node is removed). */
  hangUp(peerId: string): Promise<void>;
  /** A peer's addresses (with /p2p/), through the DHT when it is enabled, else from the peer store. */
  findPeer(peerId: string, signal?: AbortSignal): Promise<string[]>;
  connectedPeers(): string[];
  /** Called with a PeerId when the last connection to it closes (its membership must be shown again). */
  onPeerDisconnect(listener: (peerId: string) => void): void;
  stop(): Promise<void>;
}

const DEFAULT_FIND_PEER_TIMEOUT_MS = 30_000;
const DEFAULT_BOOTSTRAP_INTERVAL_MS = 30_000;
/**
 * Yamux lets a stream's receive window grow to 16 MiB; a paused or slow reader then holds up to that much per stream.
 * 4 MiB still fills a 300 Mbit/s link at 100 ms RTT, which is plenty for control traffic on small devices.
 */
const MAX_STREAM_WINDOW_BYTES = 4 * 1024 * 1024;

export async function createMeshHost(options: MeshHostOptions): Promise<MeshHost> {
  const log = options.log ?? (() => {});
  const encryption = options.encryption ?? 'noise';
  const bootstrap = (options.dht?.bootstrap ?? []).map(parseBootstrapAddress);

  // TLS and the DHT are loaded only when asked for: @libp2p/tls and its X.509 stack alone cost ~8 MiB of RSS.
  const encrypter = encryption === 'tls' ? (await import('@libp2p/tls')).tls() : noise();
  const dht = options.dht === undefined ? undefined : await dhtService(options.dht);
  const services = { identify: identify(), ping: ping(), ...(dht === undefined ? {} : { dht }) };

  const libp2p = await createLibp2p({
    privateKey: options.privateKey,
    addresses: {
      listen: [toMultiaddr(options.listen).toString()],
      ...(options.advertise === undefined ? {} : { announce: [toMultiaddr(options.advertise).toString()] }),
    },
    transports: [tcp()],
    connectionEncrypters: [encrypter],
    streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: MAX_STREAM_WINDOW_BYTES } })],
    // libp2p's default of 5 inbound connections per second per IP is too low where a whole edge site sits
    // behind one NAT address, or a test swarm on loopback.
    connectionManager: { inboundConnectionThreshold: 100 },
    services,
  });
  const peerId = libp2p.peerId.toString();
  log('info', `mesh host ${peerId} listening on ${libp2p.getMultiaddrs().join(', ')} (${encryption})`);

  const ownBootstrap = bootstrap.filter((b) => b.peerId.toString() !== peerId);
  for (const b of ownBootstrap) await libp2p.peerStore.merge(b.peerId, { multiaddrs: [b.address] });
  const bootstrapTimer = startBootstrap(libp2p, ownBootstrap, options.dht?.bootstrapIntervalMs, log);

  return {
    peerId,

    onPeerDisconnect(listener) {
      libp2p.addEventListener('peer:disconnect', (event) => listener(event.detail.toString()));
    },

    multiaddrs: () =>
      libp2p
        .getMultiaddrs()
        .map((ma) => (peerIdOf(ma) === undefined ? ma.encapsulate(`/p2p/${peerId}`) : ma).toString()),

    async handle(protocol, handler, opts = {}) {
      await libp2p.handle(
        protocol,
        (stream, connection) =>
          serveStream(stream, connection.remotePeer.toString(), protocol, handler, opts, options.authorize, log),
        opts.maxInboundStreams === undefined ? {} : { maxInboundStreams: opts.maxInboundStreams },
      );
    },

    async handleBytes(protocol, handler, opts = {}) {
      await libp2p.handle(
        protocol,
        async (stream, connection) => {
          const remotePeer = connection.remotePeer.toString();
          const refusal = await authorizeStream(remotePeer, protocol, options.authorize);
          if (refusal !== null) {
            log('warn', `refused ${protocol} stream from ${remotePeer}: ${refusal.message}`);
            stream.abort(refusal);
            return;
          }
          handler(byteStream(stream), remotePeer);
        },
        opts.maxInboundStreams === undefined ? {} : { maxInboundStreams: opts.maxInboundStreams },
      );
    },

    async openByteStream(id, protocol, opts = {}) {
      const signal = opts.signal;
      const connection = await libp2p.dial(peerIdFromString(id), signal === undefined ? {} : { signal });
      const stream = await connection.newStream(protocol, {
        ...(signal === undefined ? {} : { signal }),
        ...(opts.maxOutboundStreams === undefined ? {} : { maxOutboundStreams: opts.maxOutboundStreams }),
      });
      return byteStream(stream);
    },

    async openStream(target, protocol, opts = {}) {
      const dialTarget = target.startsWith('/') ? multiaddr(target) : peerIdFromString(target);
      const signal = opts.signal;
      const connection = await libp2p.dial(dialTarget, signal === undefined ? {} : { signal });
      const stream = await connection.newStream(protocol, signal === undefined ? {} : { signal });
      const remotePeer = connection.remotePeer.toString();
      const framed = framedStream(stream, framingOptions(opts.maxFrameBytes, protocol, remotePeer, log));
      return { stream: framed, remotePeer, remoteIp: directIpOf(connection.remoteAddr) };
    },

    async addPeerAddresses(id, addresses) {
      const peer = peerIdFromString(id);
      const parsed = addresses.map((address) => {
        const ma = multiaddr(address);
        const named = peerIdOf(ma);
        if (named !== undefined && named !== id) throw new Error(`address ${address} names peer ${named}, not ${id}`);
        return ma.decapsulateCode(CODE_P2P);
      });
      await libp2p.peerStore.merge(peer, { multiaddrs: parsed });
    },

    async hangUp(id) {
      await libp2p.hangUp(peerIdFromString(id));
    },

    async findPeer(id, signal) {
      const peer = peerIdFromString(id);
      let addresses: Multiaddr[];
      if (options.dht === undefined) {
        addresses = (await libp2p.peerStore.has(peer))
          ? (await libp2p.peerStore.get(peer)).addresses.map((a) => a.multiaddr)
          : [];
      } else {
        try {
          // DHT queries otherwise run until kad-dht's own 3-minute query timeout.
          const info = await libp2p.peerRouting.findPeer(peer, {
            signal: signal ?? AbortSignal.timeout(DEFAULT_FIND_PEER_TIMEOUT_MS),
          });
          addresses = info.multiaddrs;
        } catch (err) {
          // A finished query that did not find the peer is an answer, like an unknown peer in the peer store.
          if ((err as Error).name !== 'NotFoundError') throw err;
          addresses = [];
        }
      }
      return addresses.map((ma) => (peerIdOf(ma) === undefined ? ma.encapsulate(`/p2p/${id}`) : ma).toString());
    },

    connectedPeers: () => libp2p.getPeers().map((p) => p.toString()),

    async stop() {
      clearInterval(bootstrapTimer);
      await libp2p.stop();
    },
  };
}

/** Runs one inbound stream: authorization, then the handler, then a graceful half-close (or an abort). */
async function serveStream(
  stream: Stream,
  remotePeer: string,
  protocol: string,
  handler: MeshStreamHandler,
  opts: MeshHandleOptions,
  authorize: MeshHostOptions['authorize'],
  log: (level: MeshLogLevel, msg: string) => void,
): Promise<void> {
  if (opts.open !== true) {
    // Until authorize() answers, incoming bytes wait in the stream's own buffer (4 MiB, then libp2p resets it):
    // nothing from an unknown peer is decoded.
    const refusal = await authorizeStream(remotePeer, protocol, authorize);
    if (refusal !== null) {
      log('warn', `refused ${protocol} stream from ${remotePeer}: ${refusal.message}`);
      stream.abort(refusal);
      return;
    }
  }
  const framed = framedStream(stream, framingOptions(opts.maxFrameBytes, protocol, remotePeer, log));
  try {
    await handler(framed, remotePeer);
    await framed.close();
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    log('warn', `${protocol} stream from ${remotePeer} failed: ${error.message}`);
    framed.abort(error);
  }
}

async function authorizeStream(
  remotePeer: string,
  protocol: string,
  authorize: MeshHostOptions['authorize'],
): Promise<Error | null> {
  try {
    return authorize === undefined ? new Error('no authorizer configured') : await authorize(remotePeer, protocol);
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

async function dhtService(options: MeshDhtOptions) {
  const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht');
  return kadDHT({
    // Never /ipfs/kad/1.0.0: a swarm's DHT must not mix with the public one, nor with another swarm's.
    protocol: `${options.protocolPrefix}/kad/1.0.0`,
    // Left unset, kad-dht would only become a server once it sees a public address, which a private cluster on
    // RFC 1918 or loopback addresses never has.
    clientMode: !options.server,
    // The default mapper drops private and loopback addresses from DHT answers: exactly the ones a cluster uses.
    peerInfoMapper: passthroughMapper,
  });
}

function framingOptions(
  maxFrameBytes: number | undefined,
  protocol: string,
  remotePeer: string,
  log: (level: MeshLogLevel, msg: string) => void,
): FramedStreamOptions {
  return {
    ...(maxFrameBytes === undefined ? {} : { maxFrameBytes }),
    onFrameError: (err) => log('warn', `${protocol} stream with ${remotePeer} aborted: ${err.message}`),
  };
}

interface BootstrapPeer {
  peerId: PeerId;
  address: Multiaddr;
}

function parseBootstrapAddress(address: string): BootstrapPeer {
  const ma = multiaddr(address);
  const id = peerIdOf(ma);
  if (id === undefined) throw new Error(`bootstrap address ${address} has no /p2p/<PeerId>`);
  return { peerId: peerIdFromString(id), address: ma.decapsulateCode(CODE_P2P) };
}

/**
 * Dials the bootstrap peers now and again whenever none of them is connected (they may start after us, or restart).
 * Once connected, identify tells the DHT which of them serve it and they enter the routing table.
 */
function startBootstrap(
  libp2p: Libp2p,
  peers: BootstrapPeer[],
  intervalMs: number | undefined,
  log: (level: MeshLogLevel, msg: string) => void,
): ReturnType<typeof setInterval> | undefined {
  if (peers.length === 0) return undefined;
  let dialing = false;
  const dialAll = () => {
    if (dialing || peers.some((p) => libp2p.getConnections(p.peerId).length > 0)) return;
    dialing = true;
    void Promise.allSettled(
      peers.map((p) =>
        libp2p.dial(p.peerId).catch((err: Error) => {
          log('debug', `bootstrap dial to ${p.peerId} failed: ${err.message}`);
        }),
      ),
    ).finally(() => {
      dialing = false;
    });
  };
  dialAll();
  const timer = setInterval(dialAll, intervalMs ?? DEFAULT_BOOTSTRAP_INTERVAL_MS);
  timer.unref();
  return timer;
}

function toMultiaddr(address: { host: string; port: number }): Multiaddr {
  const family = isIP(address.host);
  const proto = family === 4 ? 'ip4' : family === 6 ? 'ip6' : 'dns';
  return multiaddr(`/${proto}/${address.host}/tcp/${address.port}`);
}

/** The peer's IP where the connection goes straight to it over TCP; undefined through a relay. */
function directIpOf(ma: Multiaddr): string | undefined {
  const components = ma.getComponents();
  if (components.some((c) => c.name === 'p2p-circuit')) return undefined;
  const ip = components[0];
  return ip !== undefined && (ip.name === 'ip4' || ip.name === 'ip6') && components[1]?.name === 'tcp'
    ? ip.value
    : undefined;
}

function peerIdOf(ma: Multiaddr): string | undefined {
  // The last /p2p/ names the peer itself (earlier ones would be relays).
  return ma.getComponents().findLast((c) => c.code === CODE_P2P)?.value;
}
