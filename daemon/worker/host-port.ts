// A free port on this host for a task that shares the host's network (process, singularity, host-network docker):
// such tasks cannot all listen on their service's target port, so each gets its own in $PORT, and the load
// balancer forwards to 127.0.0.1:PORT, over TCP or UDP as the service publishes. The port is found by binding TCP
// port 0, then UDP on the same number (a service may publish both), and closing again: another program could take
// it in between, which the task then reports by failing to listen (and is replaced).
import { createSocket } from 'node:dgram';
import { type AddressInfo, createServer } from 'node:net';

/** A port taken for UDP by something else is given up for another; after this many, the last error is thrown. */
const ATTEMPTS = 16;

export async function allocateHostPort(host = '127.0.0.1'): Promise<number> {
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const port = await freeTcpPort(host);
    try {
      await checkUdpFree(host, port);
      return port;
    } catch (err) {
      lastError = err as Error;
    }
  }
  throw new Error(`no port free for both TCP and UDP on ${host}: ${lastError?.message}`);
}

function freeTcpPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function checkUdpFree(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    socket.unref();
    socket.once('error', (err) => {
      socket.close();
      reject(err);
    });
    socket.bind({ address: host, port, exclusive: true }, () => socket.close(() => resolve()));
  });
}
