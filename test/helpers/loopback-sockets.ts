// Listeners and client sockets on 127.0.0.1 for the native relay's suites, closed after each test.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach } from 'vitest';

export interface LoopbackSockets {
  /** Servers and sockets of the current test: closed after it; a test may close them early. */
  servers: Server[];
  sockets: Socket[];
  /** A listener on a free port (half-open allowed; paused: pauseOnConnect); resolves with the port. */
  listen(onConnection: (socket: Socket) => void, paused?: boolean): Promise<number>;
  /** A connected client socket (half-open allowed). */
  connectTo(port: number): Promise<Socket>;
}

/** Registers the after-each cleanup in the calling suite and returns its helpers. */
export function loopbackSockets(): LoopbackSockets {
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy();
    for (const server of servers.splice(0)) server.close();
  });
  return {
    servers,
    sockets,
    async listen(onConnection, paused = false) {
      const server = createServer({ pauseOnConnect: paused, allowHalfOpen: true }, (socket) => {
        sockets.push(socket);
        socket.on('error', () => {});
        onConnection(socket);
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
      return (server.address() as { port: number }).port;
    },
    connectTo(port) {
      return new Promise((resolve, reject) => {
        const socket = connect({ host: '127.0.0.1', port, allowHalfOpen: true }, () => resolve(socket));
        sockets.push(socket);
        socket.on('error', reject);
      });
    },
  };
}

/** Everything a socket receives until its end. */
export function receiveAll(socket: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
}
