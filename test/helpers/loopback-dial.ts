// The mesh hop's stand-in for tests and benchmarks: a plain loopback TCP connection to a serveRemote listener,
// with the forwarder's header written first. No Noise or yamux, so what is measured or tested is the forwarder.
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';

/** Connects to host:port, sends `header`, and resolves with the socket; `signal` aborts the connection. */
export function dialLoopback(host: string, port: number, header: Buffer, signal: AbortSignal): Promise<Duplex> {
  return new Promise<Duplex>((resolve, reject) => {
    const socket = connect({ host, port, noDelay: true, allowHalfOpen: true });
    signal.addEventListener('abort', () => socket.destroy(), { once: true });
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.write(header);
      resolve(socket);
    });
  });
}
