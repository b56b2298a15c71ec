// A TCP echo server on loopback standing in for a task in load balancer tests, and the exchange a forwarded
// connection makes with it.
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, expect } from 'vitest';
import { encodeRemoteHeader, REMOTE_STATUS } from '../../daemon/lb/remote.ts';
import type { TunnelDialer } from '../../daemon/lb/tunnel.ts';

export interface EchoTask {
  /** host:port, as a task's address in the endpoint table. */
  address: string;
  close(): Promise<void>;
}

/** Starts an echo server (half-close allowed: it ends its side when the client ends). */
export async function startEchoTask(): Promise<EchoTask> {
  const sockets = new Set<Socket>();
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    address: `127.0.0.1:${(server.address() as { port: number }).port}`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** An echo task for the whole test file: started before its tests, stopped after; `address()` once started. */
export function echoTaskForFile(): { address: () => string } {
  let echo: EchoTask | undefined;
  beforeAll(async () => {
    echo = await startEchoTask();
  });
  afterAll(() => echo?.close());
  return { address: () => echo!.address };
}

/** Writes `text` on a forwarded connection, half-closes, and returns what came back (status byte first). */
export function exchange(stream: Duplex, text: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
    stream.end(text);
  });
}

/**
 * Opens `count` forwarded connections to the echo task at once through `dialer` and checks each got the status
 * byte "ok" and its own bytes back.
 */
export async function expectEchoes(dialer: TunnelDialer, count: number, label: string): Promise<void> {
  const replies = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const stream = await dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'echo' }), AbortSignal.timeout(5000));
      return exchange(stream, `${label} ${i}`);
    }),
  );
  for (const [i, reply] of replies.entries()) {
    expect(reply[0]).toBe(REMOTE_STATUS.ok);
    expect(reply.subarray(1).toString()).toBe(`${label} ${i}`);
  }
}
