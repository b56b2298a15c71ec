// The mesh hop through the native relay: a forwarded connection to a task on another node goes to that node's data
// path port, where the relay (native/relay.c) moves its bytes on both nodes without JavaScript touching a byte. The
// HTTP/2 tunnel (tunnel.ts) multiplexes every connection between two nodes in JavaScript at both ends; this is what
// the lb bench's mesh-hop rows measure.
//
// Muxes: where the peer's ticket says it serves them (`mux`), connections to it are streams of a mux
// (native/mux.c): one TLS connection per relay thread and peer, opened once, each connection then a frame, with no
// TCP connect or handshake of its own, and the frames of many connections going out together. Otherwise (an older
// peer), or while a mux to the peer cannot be set up, each connection is a native hop of its own: one TCP connection
// and one TLS handshake.
//
// Keys: the ticket the peer issues over the mesh (data-path.ts). A peer whose relay serves the data path says so in
// its ticket (`relay`), and such a ticket is good for any number of handshakes until it expires: each is
// psk_dhe_ke, with an ECDHE exchange of its own, so reusing the key reveals nothing, and one mesh round trip keys a
// peer's connections for TICKET_REUSE_MS. A peer whose ticket has no `relay` (the data path off, an older daemon, the
// relay not built there) gets the tunnel, as does one whose data path cannot be reached (NAT, a firewall): the
// tunnel then goes through the mesh (data-path.ts's directFirst).
//
// Handshake budget (native hops of their own only: a mux stream has no handshake): a native hop is cheap per byte
// and dear to open, the tunnel the other way round. Measured on the lb bench (2 cores, both daemons on one
// machine): a native hop costs about 48 us of CPU per request against about 100 through the tunnel, but opening one
// costs a TCP connect and a TLS handshake (an X25519+ML-KEM exchange at both ends), about 1.2 ms more per connection
// than a tunnel stream; with a new connection per request (lb-close) native hops made 0.13x HAProxy's requests/s and
// the tunnel 0.2x. So each peer gets NATIVE_HOPS_PER_SECOND new native hops a second (a token bucket,
// NATIVE_HOP_BURST deep): a client's keep-alive pool, opened at once and then reused, gets native hops, while
// connections beyond that rate go through the tunnel, whose streams need no handshake. That also bounds the CPU a
// burst of short connections can take from both nodes for handshakes. Over a mux the same bench made 0.87x with
// keep-alive (27 us of CPU per request) and 0.40x with a connection per request.
import { connect, type Socket } from 'node:net';
import {
  type DataPathTicket,
  FALLBACK_MS,
  type FetchTicket,
  HANDSHAKE_TIMEOUT_MS,
  HEAD_START_MS,
  TICKET_REUSE_MS,
} from './data-path.ts';
import type { Endpoint } from './endpoints.ts';
import type { Mux, NativeRelay, ParkedConnection, SettingUp, SetupOutcome } from './native-relay.ts';

/** A set-up connection to the task's node: its status byte, and the connection waiting to be joined or dropped. */
export interface NativeHop {
  status: number;
  parked: ParkedConnection;
}

/**
 * Opens a native hop to the endpoint's node, sending `header`; resolves with its status, or undefined when this peer
 * is to be reached through the tunnel instead. Rejects with the abort's reason.
 */
export type DialNative = (endpoint: Endpoint, header: Buffer, signal: AbortSignal) => Promise<NativeHop | undefined>;

/** DialNative by the node's PeerId (IngressSet maps node IDs to PeerIds). */
export type DialNativePeer = (peerId: string, header: Buffer, signal: AbortSignal) => Promise<NativeHop | undefined>;

export interface NativeHopDialer {
  dial: DialNativePeer;
  /** Native hops joined and not ended yet. */
  open(): number;
  /** Closes the muxes with no stream open for MUX_IDLE_MS (a timer does it every minute); returns how many. */
  closeIdleMuxes(): number;
  /** Muxes up now. */
  muxes(): number;
}

interface CachedTicket {
  ticket: Promise<DataPathTicket | undefined>;
  until: number;
}

export function nativeHopDialer(
  relay: NativeRelay,
  fetchTicket: FetchTicket,
  log: (message: string) => void,
  now: () => number = Date.now,
): NativeHopDialer {
  let open = 0;
  /** Counts the hop as open from its join to its end. */
  const counted = (parked: ParkedConnection): ParkedConnection => ({
    join(socket, status, lingerMs, onDone) {
      const relayed = parked.join(socket, status, lingerMs, (end) => {
        open--;
        onDone(end);
      });
      if (relayed !== undefined) open++;
      return relayed;
    },
    drop: (status) => parked.drop(status),
  });
  const tickets = new Map<string, CachedTicket>();
  const budgets = new Map<string, HandshakeBudget>();
  const budgetFor = (peerId: string): HandshakeBudget => {
    let budget = budgets.get(peerId);
    if (budget === undefined) {
      budget = new HandshakeBudget(now());
      budgets.set(peerId, budget);
    }
    return budget;
  };
  const tunnelOnlyUntil = new Map<string, number>();
  const ticketFor = (peerId: string): Promise<DataPathTicket | undefined> => {
    const cached = tickets.get(peerId);
    if (cached !== undefined && cached.until > now()) return cached.ticket;
    // Not the connection's signal: other connections to this peer wait for the same ticket.
    const ticket = fetchTicket(peerId, AbortSignal.timeout(FETCH_TIMEOUT_MS)).then(
      (fetched) => (fetched?.relay ? fetched : undefined),
      (err: unknown) => {
        tickets.delete(peerId);
        throw err;
      },
    );
    tickets.set(peerId, { ticket, until: now() + TICKET_REUSE_MS });
    return ticket;
  };
  const useTunnel = (peerId: string, why: string): undefined => {
    tickets.delete(peerId);
    tunnelOnlyUntil.set(peerId, now() + FALLBACK_MS);
    log(`lb: native data path to ${peerId} failed (${why}); using the tunnel for it`);
    return undefined;
  };
  const muxes = new MuxPool(relay, log, now, (peerId) => tickets.delete(peerId));
  setInterval(() => muxes.closeIdle(), IDLE_SWEEP_MS).unref();
  const dial: DialNativePeer = async (peerId, header, signal) => {
    if ((tunnelOnlyUntil.get(peerId) ?? 0) > now()) return undefined;
    let ticket: DataPathTicket | undefined;
    try {
      ticket = await ticketFor(peerId);
    } catch (err) {
      signal.throwIfAborted();
      return useTunnel(peerId, `no ticket: ${(err as Error).message}`);
    }
    signal.throwIfAborted();
    if (ticket === undefined) return undefined;
    const mux = ticket.mux ? await muxes.get(peerId, ticket) : undefined;
    signal.throwIfAborted();
    if (mux !== undefined) {
      return setUp(
        (onSetup) => mux.open(header, onSetup),
        signal,
        (outcome) => {
          // A mux whose streams fail is retired; the next connection gets a new one. This one takes the tunnel.
          if (outcome.kind === 'failed' && outcome.error !== 'ECANCELED') {
            log(`lb: mux to ${peerId}: a stream failed to open (${outcome.error}); starting a new one`);
            mux.cut();
          }
          return undefined;
        },
      );
    }
    const budget = budgetFor(peerId);
    if (!budget.take(now())) {
      if (budget.shouldSay(now()))
        log(
          `lb: more than ${NATIVE_HOPS_PER_SECOND} new connections a second to ${peerId}: those beyond go through the tunnel`,
        );
      return undefined;
    }
    let socket: Socket;
    try {
      socket = await connectTo(ticket, signal);
    } catch (err) {
      signal.throwIfAborted();
      return useTunnel(peerId, (err as Error).message);
    }
    return setUp(
      (onSetup) => relay.dial(socket, ticket, header, onSetup),
      signal,
      (outcome) => {
        // The handshake failed: most likely the peer restarted and forgot the key. The next connection fetches a
        // new ticket; this one goes through the tunnel.
        tickets.delete(peerId);
        log(
          `lb: native data path to ${peerId}: set-up failed (${outcome.kind === 'failed' ? outcome.error : outcome.kind})`,
        );
        return undefined;
      },
    );
  };
  /**
   * Runs a set-up (a native hop's, or a stream's on a mux) until its status: the hop, counted while joined; the
   * abort's reason; or what `onFailure` makes of a failed set-up.
   */
  const setUp = (
    start: (onSetup: (outcome: SetupOutcome, parked: ParkedConnection | undefined) => void) => SettingUp,
    signal: AbortSignal,
    onFailure: (outcome: SetupOutcome) => undefined,
  ): Promise<NativeHop | undefined> =>
    new Promise<NativeHop | undefined>((resolve, reject) => {
      const onAbort = () => setup.cut();
      const setup = start((outcome, parked) => {
        signal.removeEventListener('abort', onAbort);
        if (outcome.kind === 'ready' && parked !== undefined) {
          if (signal.aborted) {
            parked.drop();
            reject(signal.reason);
          } else {
            resolve({ status: outcome.status, parked: counted(parked) });
          }
          return;
        }
        if (signal.aborted) reject(signal.reason);
        else resolve(onFailure(outcome));
      });
      signal.addEventListener('abort', onAbort, { once: true });
    });
  return { dial, open: () => open, closeIdleMuxes: () => muxes.closeIdle(), muxes: () => muxes.up() };
}

/**
 * A mux with no stream open for this long is closed: a peer forwarded to once holds no TLS connection (about
 * 70 KiB of buffers at both ends) per relay thread for ever. A new connection opens a new one.
 */
export const MUX_IDLE_MS = 5 * 60_000;
/** How long a peer whose mux failed to set up gets native hops of their own before a mux is tried again. */
export const MUX_RETRY_MS = 10_000;
const IDLE_SWEEP_MS = 60_000;

/** One of a peer's muxes: being set up, or up (`up`), with its streams counted from open to end. */
interface MuxSlot {
  pending: Promise<Mux | undefined>;
  up: Mux | undefined;
  streams: number;
  idleSince: number;
}

/**
 * The muxes of this thread: per peer, one per relay thread (each mux and its streams run on one), used in turn.
 * A mux is opened on first use and replaced once it ends. A peer whose mux cannot be set up gets native hops of
 * their own for MUX_RETRY_MS, and its ticket is fetched anew: most likely it restarted and forgot the key, as a
 * stopped daemon's muxes end with it.
 */
class MuxPool {
  private readonly peers = new Map<string, { slots: (MuxSlot | undefined)[]; next: number }>();
  private readonly offUntil = new Map<string, number>();
  /** Peers whose last mux set-up failed: said once in the log, not at every retry. */
  private readonly failing = new Set<string>();

  private readonly relay: NativeRelay;
  private readonly log: (message: string) => void;
  private readonly now: () => number;
  private readonly forgetTicket: (peerId: string) => void;

  constructor(
    relay: NativeRelay,
    log: (message: string) => void,
    now: () => number,
    forgetTicket: (peerId: string) => void,
  ) {
    this.relay = relay;
    this.log = log;
    this.now = now;
    this.forgetTicket = forgetTicket;
  }

  /** A mux to the peer that is up, or undefined (native hops of their own, then). */
  async get(peerId: string, ticket: DataPathTicket): Promise<Mux | undefined> {
    if ((this.offUntil.get(peerId) ?? 0) > this.now()) return undefined;
    let peer = this.peers.get(peerId);
    if (peer === undefined) {
      peer = { slots: new Array(this.relay.threads).fill(undefined), next: 0 };
      this.peers.set(peerId, peer);
    }
    const slots = peer.slots;
    const index = peer.next++ % slots.length;
    let slot = slots[index];
    if (slot === undefined) {
      const opened: MuxSlot = { pending: Promise.resolve(undefined), up: undefined, streams: 0, idleSince: this.now() };
      opened.pending = this.open(peerId, ticket, index, () => {
        if (slots[index] === opened) slots[index] = undefined;
      }).then((mux) => {
        opened.up = mux;
        return mux;
      });
      slots[index] = slot = opened;
    }
    const mux = await slot.pending;
    if (mux === undefined || mux.ended) {
      if (slots[index] === slot) slots[index] = undefined;
      return undefined;
    }
    return this.counting(slot, mux);
  }

  up(): number {
    let up = 0;
    for (const peer of this.peers.values()) for (const slot of peer.slots) if (slot?.up?.ended === false) up++;
    return up;
  }

  closeIdle(): number {
    let closed = 0;
    for (const [peerId, peer] of this.peers) {
      peer.slots.forEach((slot, index) => {
        if (slot?.up === undefined || slot.streams > 0 || this.now() - slot.idleSince < MUX_IDLE_MS) return;
        peer.slots[index] = undefined;
        slot.up.cut();
        closed++;
      });
      if (peer.slots.every((slot) => slot === undefined)) this.peers.delete(peerId);
    }
    return closed;
  }

  /** The mux, its streams counted in the slot from open() until they fail, are dropped or end. */
  private counting(slot: MuxSlot, mux: Mux): Mux {
    const now = this.now;
    return {
      open(header, onSetup) {
        slot.streams++;
        let counted = true;
        const release = () => {
          if (!counted) return;
          counted = false;
          slot.streams--;
          slot.idleSince = now();
        };
        return mux.open(header, (outcome, parked) => {
          if (parked === undefined) {
            release();
            onSetup(outcome, parked);
            return;
          }
          onSetup(outcome, {
            join: (socket, status, lingerMs, onDone) =>
              parked.join(socket, status, lingerMs, (end) => {
                release();
                onDone(end);
              }),
            drop(status) {
              release();
              parked.drop(status);
            },
          });
        });
      },
      cut: () => mux.cut(),
      get ended() {
        return mux.ended;
      },
    };
  }

  private open(peerId: string, ticket: DataPathTicket, thread: number, onEnd: () => void): Promise<Mux | undefined> {
    return connectTo(ticket, new AbortController().signal).then(
      (socket) =>
        new Promise<Mux | undefined>((resolve) => {
          const timer = setTimeout(() => setup.cut(), HANDSHAKE_TIMEOUT_MS);
          const setup = this.relay.dialMux(
            socket,
            ticket,
            thread,
            (outcome) => {
              clearTimeout(timer);
              if (outcome.kind === 'up') {
                this.failing.delete(peerId);
                resolve(outcome.mux);
              } else {
                resolve(this.fallBack(peerId, `set-up failed (${outcome.error})`));
              }
            },
            (error) => {
              onEnd();
              if (error !== undefined) this.log(`lb: mux to ${peerId} ended (${error})`);
            },
          );
        }),
      (err: Error) => this.fallBack(peerId, err.message),
    );
  }

  private fallBack(peerId: string, why: string): undefined {
    this.offUntil.set(peerId, this.now() + MUX_RETRY_MS);
    this.forgetTicket(peerId);
    if (!this.failing.has(peerId))
      this.log(`lb: mux to ${peerId}: ${why}; its connections get native hops of their own until one sets up`);
    this.failing.add(peerId);
    return undefined;
  }
}

/** New native hops a peer gets per second, on average (see the top of this file). */
export const NATIVE_HOPS_PER_SECOND = 50;
/** How many a peer may get at once: a client's connection pool opened in one go. */
export const NATIVE_HOP_BURST = 200;
/** How often the log may say that a peer's connections overflow to the tunnel. */
const OVER_BUDGET_LOG_MS = 60_000;

/** A token bucket of native hop handshakes for one peer. */
class HandshakeBudget {
  private tokens = NATIVE_HOP_BURST;
  private refilledAt: number;
  private saidAt = Number.NEGATIVE_INFINITY;

  constructor(now: number) {
    this.refilledAt = now;
  }

  /** Takes one handshake; false when the peer has had its share for now. */
  take(now: number): boolean {
    const elapsed = Math.max(0, now - this.refilledAt);
    this.tokens = Math.min(NATIVE_HOP_BURST, this.tokens + (elapsed * NATIVE_HOPS_PER_SECOND) / 1000);
    this.refilledAt = now;
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }

  /** Whether to log the overflow now (once per OVER_BUDGET_LOG_MS). */
  shouldSay(now: number): boolean {
    if (now - this.saidAt < OVER_BUDGET_LOG_MS) return false;
    this.saidAt = now;
    return true;
  }
}

/** The ticket fetch (a mesh round trip) gets this long. */
const FETCH_TIMEOUT_MS = 5000;

/**
 * A TCP connection to the ticket's data path, or the error: a refused port, the abort, or no answer within
 * HEAD_START_MS (a firewall that drops: the peer then gets the tunnel, whose own dial goes to the mesh).
 */
function connectTo(ticket: DataPathTicket, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: ticket.host, port: ticket.port, noDelay: true });
    const settle = (err: Error | undefined) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      if (err === undefined) {
        resolve(socket);
        return;
      }
      socket.destroy();
      reject(err);
    };
    const onAbort = () => settle(signal.reason as Error);
    const timer = setTimeout(
      () => settle(new Error(`${ticket.host}:${ticket.port} did not answer in ${HEAD_START_MS} ms`)),
      HEAD_START_MS,
    );
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('error', (err) => settle(err));
    socket.once('connect', () => settle(undefined));
  });
}
