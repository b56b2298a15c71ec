// The mesh hop for ingress threads (ingress-threads.ts). libp2p lives in the daemon's main thread, so each ingress
// thread reaches other nodes through it: the thread runs its own TunnelDialer (tunnel.ts: one HTTP/2 session per
// peer, carrying all of the thread's connections to that peer), and asks the main thread for the tunnel's transport
// over a unix socket in a directory only the daemon's user can enter:
//
//   thread -> main:  u8 length, then the peer's PeerId (utf8); from then on, the tunnel's bytes both ways
//
// The main thread opens a tunnel stream to the peer (authenticated and encrypted by the mesh) and moves bytes
// between the two. So the HTTP/2 work of forwarded connections stays in the threads, and the main thread only
// moves whole tunnel writes, which HTTP/2 coalesces over many connections, between the socket and the mesh.
// A tunnel that cannot be opened closes the socket; the thread's TunnelDialer then fails the connections waiting
// for it, which their forwarders retry on other tasks.
//
// The socket is only for this process's own threads; anything else that reaches it gets its connection closed on
// a malformed request.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { pump } from './pump.ts';
import type { OpenTunnel } from './tunnel.ts';

/** Longer than any PeerId's text form (52 characters for Ed25519 keys). */
const PEER_ID_MAX_BYTES = 128;
/** For the request to arrive once connected. */
const REQUEST_TIMEOUT_MS = 5000;

export interface TunnelRelay {
  server: Server;
  /** Tunnels relayed now. */
  readonly openCount: number;
}

/**
 * The main thread's side: listens on `path` and opens a tunnel per request. A unix socket is bound by the time this
 * returns (only 'listening' comes later), so threads may connect at once; a failure to listen is logged.
 */
export function serveTunnelRelay(path: string, openTunnel: OpenTunnel, log: (message: string) => void): TunnelRelay {
  const open = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
    relayOne(socket, openTunnel, log);
  });
  // Closing the relay cuts the tunnels through it too: the threads are gone by then.
  server.once('close', () => {
    for (const socket of open) socket.destroy();
  });
  server.on('error', (err) => log(`lb: tunnel relay on ${path}: ${err.message}`));
  server.listen(path);
  return {
    server,
    get openCount() {
      return open.size;
    },
  };
}

function relayOne(socket: Socket, openTunnel: OpenTunnel, log: (message: string) => void): void {
  const abort = new AbortController();
  let buffered = Buffer.alloc(0);
  const timer = setTimeout(() => socket.destroy(), REQUEST_TIMEOUT_MS);
  socket.on('error', () => socket.destroy());
  socket.once('close', () => {
    clearTimeout(timer);
    abort.abort(new Error('ingress thread closed its tunnel'));
  });
  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    if (buffered.length < 1) return;
    const idLength = buffered[0]!;
    if (idLength === 0 || idLength > PEER_ID_MAX_BYTES) {
      log('lb: tunnel relay: malformed request');
      socket.destroy();
      return;
    }
    if (buffered.length < 1 + idLength) return;
    socket.off('data', onData);
    socket.pause();
    clearTimeout(timer);
    const peerId = buffered.toString('utf8', 1, 1 + idLength);
    const rest = buffered.subarray(1 + idLength);
    openTunnel(peerId, abort.signal).then(
      (stream) => {
        if (socket.destroyed) {
          stream.destroy();
          return;
        }
        if (rest.length > 0) stream.write(rest);
        pump(socket, stream, () => {});
      },
      (err: Error) => {
        log(`lb: tunnel relay to ${peerId}: ${err.message}`);
        socket.destroy();
      },
    );
  };
  socket.on('data', onData);
}

/** An ingress thread's side: an OpenTunnel that goes through the main thread's relay at `path`. */
export function relayedTunnels(path: string): OpenTunnel {
  return (peerId, signal) =>
    new Promise((resolve, reject) => {
      const id = Buffer.from(peerId, 'utf8');
      if (id.length === 0 || id.length > PEER_ID_MAX_BYTES) {
        reject(new Error(`a PeerId of ${id.length} bytes cannot be relayed`));
        return;
      }
      const socket = connect({ path, allowHalfOpen: true });
      const onAbort = () => socket.destroy(signal.reason as Error);
      signal.addEventListener('abort', onAbort, { once: true });
      socket.once('error', reject);
      socket.once('connect', () => {
        signal.removeEventListener('abort', onAbort);
        socket.off('error', reject);
        socket.write(Buffer.concat([Buffer.from([id.length]), id]));
        resolve(socket);
      });
    });
}
