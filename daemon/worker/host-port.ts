// A free TCP port on this host for a task that shares the host's network (process, singularity, host-network
// docker): such tasks cannot all listen on their service's target port, so each gets its own in $PORT, and the load
// balancer forwards to 127.0.0.1:PORT. The port is found by binding port 0 and closing again: another program could
// take it in between, which the task then reports by failing to listen (and is replaced).
import { type AddressInfo, createServer } from 'node:net';

export function allocateHostPort(host = '127.0.0.1'): Promise<number> {
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
