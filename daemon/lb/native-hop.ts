// The mesh hop through the native relay: a forwarded connection to a task on another node goes over one TCP
// connection of its own to that node's data path port, which the relay (native/relay.c) sets up with TLS 1.3 and
// then relays, on both nodes, without JavaScript touching a byte. The HTTP/2 tunnel (tunnel.ts) multiplexes every
// connection between two nodes in JavaScript at both ends; this is what the lb bench's mesh-hop rows measure.
//
// Keys: the ticket the peer issues over the mesh (data-path.ts). A peer whose relay serves the data path says so in
// its ticket (`relay`), and such a ticket is good for any number of handshakes until it expires: each is
// psk_dhe_ke, with an ECDHE exchange of its own, so reusing the key reveals nothing, and one mesh round trip keys a
// peer's connections for TICKET_REUSE_MS. A peer whose ticket has no `relay` (the data path off, an older daemon, the
// relay not built there) gets the tunnel, as does one whose data path cannot be reached (NAT, a firewall): the
// tunnel then goes through the mesh (data-path.ts's directFirst).
import { connect, type Socket } from 'node:net';
import { type DataPathTicket, FALLBACK_MS, type FetchTicket, HEAD_START_MS, TICKET_REUSE_MS } from './data-path.ts';
import type { Endpoint } from './endpoints.ts';
import type { NativeRelay, ParkedConnection } from './native-relay.ts';

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
    let socket: Socket;
    try {
      socket = await connectTo(ticket, signal);
    } catch (err) {
      signal.throwIfAborted();
      return useTunnel(peerId, (err as Error).message);
    }
    return new Promise<NativeHop | undefined>((resolve, reject) => {
      const onAbort = () => setup.cut();
      const setup = relay.dial(socket, ticket, header, (outcome, parked) => {
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
        if (signal.aborted) {
          reject(signal.reason);
          return;
        }
        // The handshake failed: most likely the peer restarted and forgot the key. The next connection fetches a
        // new ticket; this one goes through the tunnel.
        tickets.delete(peerId);
        log(
          `lb: native data path to ${peerId}: set-up failed (${outcome.kind === 'failed' ? outcome.error : outcome.kind})`,
        );
        resolve(undefined);
      });
      signal.addEventListener('abort', onAbort, { once: true });
    });
  };
  return { dial, open: () => open };
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
