// Parts of the load balancer benches' child processes that the TCP (lb.ts) and UDP (lb-udp.ts) benches share: the
// endpoint table they balance over, and the far end of the two-process hop.
import { createServer, type Socket } from 'node:net';
import type { Endpoint, ServiceEndpoints } from '../../../daemon/lb/endpoints.ts';
import { serveRemote } from '../../../daemon/lb/remote.ts';

/** One service, round-robin over the backends as tasks b1, b2, ... of node `nodeId`. */
export function endpointsFor(backends: string[], nodeId: string): ServiceEndpoints {
  const endpoints: Endpoint[] = backends.map((address, i) => ({ taskId: `b${i + 1}`, nodeId, address }));
  return {
    serviceId: 'bench',
    serviceName: 'bench',
    algorithm: 'round-robin',
    proxyProtocol: false,
    endpoints,
    draining: [],
  };
}

/** The task's node of the hop: serveRemote on each loopback connection to `port`, tasks b1... at `backends`. */
export async function runServeRemoteNode(port: number, backends: string[]): Promise<void> {
  const addresses = new Map(backends.map((address, i) => [`b${i + 1}`, address]));
  const server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: false }, (stream: Socket) => {
    void serveRemote(stream, (taskId) => addresses.get(taskId));
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  process.stdout.write(`serveRemote node listening on ${port}\n`);
}
