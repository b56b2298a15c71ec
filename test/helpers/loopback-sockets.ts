// Listeners and client sockets on 127.0.0.1 for the native relay's suites, closed after each test.
import { randomBytes } from 'node:crypto';
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

/**
 * Request and answer in turn, as a keep-alive client and its backend: the task echoes what it gets, and the client
 * sends its next message only once the whole echo is back. Each message (1 to 4,000 bytes) is written whole, in
 * two writes one event-loop turn apart, or in two writes at once, so a relay sees short reads, records that
 * arrive together and records split over segments. A read the relay skips by mistake (after a short one) leaves
 * a message without its echo, and the caller's test runs out of time. Resolves with the bytes echoed.
 */
export async function echoInTurns(client: Socket, task: Socket, turns: number): Promise<number> {
  task.on('data', (chunk: Buffer) => task.write(chunk));
  let received = Buffer.alloc(0);
  let waiting: { length: number; resolve: () => void } | undefined;
  client.on('data', (chunk: Buffer) => {
    received = Buffer.concat([received, chunk]);
    if (waiting !== undefined && received.length >= waiting.length) waiting.resolve();
  });
  let echoed = 0;
  for (let turn = 0; turn < turns; turn++) {
    const message = randomBytes(1 + ((turn * 7919) % 4000));
    const half = message.length >> 1;
    const { promise: back, resolve } = Promise.withResolvers<void>();
    waiting = { length: message.length, resolve };
    if (turn % 3 === 0) client.write(message);
    else if (turn % 3 === 1) {
      client.write(message.subarray(0, half));
      setImmediate(() => client.write(message.subarray(half)));
    } else {
      client.write(message.subarray(0, half));
      client.write(message.subarray(half));
    }
    if (received.length < message.length) await back;
    if (!received.equals(message)) throw new Error(`turn ${turn}: the echo differs from what was sent`);
    received = Buffer.alloc(0);
    echoed += message.length;
  }
  return echoed;
}
