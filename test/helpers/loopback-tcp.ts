// Small TCP helpers on 127.0.0.1 for load balancer tests and benchmarks.
import { connect, createServer } from 'node:net';

/** A port nothing listens on right now (the kernel's pick, released before returning). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Connects, reads until the server closes, and resolves with what it sent; '' when the connection fails. */
export function readAll(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let body = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      body += chunk;
    });
    socket.on('close', () => resolve(body));
    socket.on('error', () => resolve(''));
  });
}
