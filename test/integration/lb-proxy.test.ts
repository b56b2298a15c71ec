// The load balancer's data plane on real loopback TCP: an Ingress in front of three small HTTP backends. Balancing,
// retry before the first byte and ejection when a backend goes away, draining, PROXY protocol v2, and the remote
// path through a stand-in for the mesh (dialRemote over a loopback TCP connection to a serveRemote handler).
// Every case runs with each way of moving a local connection's bytes: the native relay (native/relay.c) and pump.ts.
// The native relay must be built in CI; elsewhere its half is left out when it is not, and says why.

import { createHash, randomBytes } from 'node:crypto';
import { Agent, createServer as createHttpServer, get, type Server as HttpServer } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { duplexPair } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Endpoint, ServiceEndpoints } from '../../daemon/lb/endpoints.ts';
import { type DialRemote, Ingress, serveRemote } from '../../daemon/lb/forwarder.ts';
import { renderMetrics } from '../../daemon/lb/metrics.ts';
import { nativeRelay, type RelayMode } from '../../daemon/lb/native-relay.ts';
import { OutlierDetector } from '../../daemon/lb/outliers.ts';
import { readProxyHeader } from '../../daemon/lb/proxy-protocol.ts';
import { TunnelDialer, TunnelServer } from '../../daemon/lb/tunnel.ts';
import { dialLoopback } from '../helpers/loopback-dial.ts';

const NATIVE = nativeRelay();
if (typeof NATIVE === 'string' && process.env.CI) throw new Error(`CI needs the native relay: ${NATIVE}`);
const RELAY_MODES: RelayMode[] = typeof NATIVE === 'string' ? ['js'] : ['native', 'js'];
/** The relay mode of the suite running now. */
let relayMode: RelayMode = 'js';

const LOCAL = 'node-local';
const OTHER = 'node-other';

interface Backend {
  name: string;
  server: HttpServer | Server;
  port: number;
  sockets: Set<Socket>;
}

/** An HTTP server answering `<name> <remote port of the connection>`. */
async function httpBackend(name: string): Promise<Backend> {
  const sockets = new Set<Socket>();
  const server = createHttpServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(`${name} ${req.socket.remotePort}`);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { name, server, port: (server.address() as { port: number }).port, sockets };
}

/** A TCP server that reads a PROXY v2 header and answers with the addresses in it, as JSON. */
async function proxyProtocolBackend(name: string): Promise<Backend> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    readProxyHeader(s).then(
      (header) => s.end(JSON.stringify({ name, ...header.addresses })),
      () => s.destroy(),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { name, server, port: (server.address() as { port: number }).port, sockets };
}

async function stopBackend(b: Backend): Promise<void> {
  const closed = new Promise<void>((r) => b.server.close(() => r()));
  for (const s of b.sockets) s.destroy();
  await closed;
}

/** GET / on the ingress over a new connection (or the agent's); resolves with the body. */
function request(port: number, agent: Agent | false = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve(body));
      res.on('error', reject);
    });
    req.setTimeout(10_000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
  });
}

/** Opens a raw connection, optionally sends something, and reads until it closes (a reset counts as a close). */
function rawExchange(
  port: number,
  send?: string,
): Promise<{ data: string; reset: boolean; local: { address: string; port: number } }> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let data = '';
    let reset = false;
    const local = { address: '', port: 0 };
    socket.setEncoding('utf8');
    socket.on('connect', () => {
      local.address = socket.localAddress!;
      local.port = socket.localPort!;
      if (send !== undefined) socket.write(send);
    });
    socket.on('data', (c: string) => {
      data += c;
    });
    socket.on('error', () => {
      reset = true;
    });
    socket.on('close', () => resolve({ data, reset, local }));
  });
}

function endpointOf(b: Backend, nodeId = LOCAL): Endpoint {
  return { taskId: b.name, nodeId, address: `127.0.0.1:${b.port}` };
}

function table(endpoints: Endpoint[], extra: Partial<ServiceEndpoints> = {}): ServiceEndpoints {
  return {
    serviceId: 'svc-1',
    serviceName: 'web',
    algorithm: 'round-robin',
    proxyProtocol: false,
    endpoints,
    draining: [],
    ...extra,
  };
}

function tally(bodies: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const body of bodies) {
    const name = body.split(' ')[0]!;
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

// Anything escaping into the process (a listener that throws, an unhandled error event) lands here.
const escaped: unknown[] = [];
const onEscape = (err: unknown) => escaped.push(err);
beforeAll(() => {
  process.on('uncaughtException', onEscape);
  process.on('unhandledRejection', onEscape);
});
afterAll(() => {
  process.off('uncaughtException', onEscape);
  process.off('unhandledRejection', onEscape);
});

let backends: Backend[] = [];
let ingresses: Ingress[] = [];
let servers: Server[] = [];
afterEach(async () => {
  await Promise.all(ingresses.map((i) => i.close()));
  await Promise.all(backends.map(stopBackend));
  for (const s of servers) s.close();
  ingresses = [];
  backends = [];
  servers = [];
  expect(escaped).toEqual([]);
});

async function startIngress(
  services: () => ServiceEndpoints | undefined,
  extra: Partial<ConstructorParameters<typeof Ingress>[0]> = {},
): Promise<Ingress> {
  const ingress = new Ingress({ nodeId: LOCAL, port: 0, host: '127.0.0.1', services, relay: relayMode, ...extra });
  await ingress.listen();
  ingresses.push(ingress);
  return ingress;
}

async function threeBackends(): Promise<Backend[]> {
  const list = await Promise.all(['b1', 'b2', 'b3'].map(httpBackend));
  backends.push(...list);
  return list;
}

/**
 * A stand-in for the mesh: a "remote node" listening on loopback that hands every connection to serveRemote, and a
 * dialRemote that connects to it and sends the header first. The real one is a libp2p stream.
 */
async function fakeMesh(
  resolveAddress: (taskId: string) => string | undefined,
): Promise<{ dialRemote: DialRemote; dials: () => number }> {
  const node = createServer((stream) => {
    void serveRemote(stream, resolveAddress);
  });
  await new Promise<void>((r) => node.listen(0, '127.0.0.1', () => r()));
  servers.push(node);
  const port = (node.address() as { port: number }).port;
  let dials = 0;
  const dialRemote: DialRemote = (endpoint, header, signal) => {
    expect(endpoint.nodeId).toBe(OTHER);
    dials++;
    return dialLoopback('127.0.0.1', port, header, signal);
  };
  return { dialRemote, dials: () => dials };
}

describe.each(RELAY_MODES)('Ingress, relay %s', (relay) => {
  beforeAll(() => {
    relayMode = relay;
  });

  it('spreads connections evenly over three backends with round-robin', async () => {
    const [b1, b2, b3] = await threeBackends();
    const ingress = await startIngress(() => table([b1!, b2!, b3!].map((b) => endpointOf(b))));
    const bodies: string[] = [];
    for (let i = 0; i < 30; i++) bodies.push(await request(ingress.port));
    expect(tally(bodies)).toEqual({ b1: 10, b2: 10, b3: 10 });

    const stats = ingress.stats();
    expect(stats.connectionsTotal).toBe(30);
    expect(stats.errors).toBe(0);
    expect(stats.bytesIn).toBeGreaterThan(0);
    expect(stats.bytesOut).toBeGreaterThan(stats.bytesIn);
    expect(stats.tasks.map((t) => [t.taskId, t.connectionsTotal]).sort()).toEqual([
      ['b1', 10],
      ['b2', 10],
      ['b3', 10],
    ]);
    const metrics = renderMetrics([stats]);
    expect(metrics).toContain('swarmd_lb_connections_total{service="web",task="b2"} 10');
  });

  it('serves concurrent keep-alive clients with least-connections and p2c', async () => {
    const list = await threeBackends();
    for (const algorithm of ['least-connections', 'p2c'] as const) {
      const ingress = await startIngress(() =>
        table(
          list.map((b) => endpointOf(b)),
          { algorithm },
        ),
      );
      const agent = new Agent({ keepAlive: true, maxSockets: 6 });
      const bodies = await Promise.all(Array.from({ length: 60 }, () => request(ingress.port, agent)));
      agent.destroy();
      expect(bodies).toHaveLength(60);
      expect(Object.keys(tally(bodies)).length).toBeGreaterThan(1);
    }
  });

  it('retries another backend before the first byte when one is gone, and ejects it', async () => {
    const [b1, b2, b3] = await threeBackends();
    const outliers = new OutlierDetector({ consecutiveFailures: 3, baseEjectionMs: 600_000 });
    const ingress = await startIngress(() => table([b1!, b2!, b3!].map((b) => endpointOf(b))), { outliers });
    for (let i = 0; i < 6; i++) await request(ingress.port);
    await stopBackend(b2!);
    backends = backends.filter((b) => b !== b2);

    const bodies: string[] = [];
    for (let i = 0; i < 30; i++) bodies.push(await request(ingress.port));
    expect(bodies).toHaveLength(30);
    expect(tally(bodies).b2).toBeUndefined();
    expect(outliers.isEjected('b2')).toBe(true);

    const stats = ingress.stats();
    const b2Stats = stats.tasks.find((t) => t.taskId === 'b2')!;
    expect(b2Stats.errors).toBe(3);
    expect(b2Stats.ejections).toBe(1);
    expect(stats.retries).toBe(3);
    expect(stats.errors).toBe(0);
  });

  it('fails a connection only when every attempt fails', async () => {
    const [b1] = await threeBackends();
    await stopBackend(b1!);
    backends = backends.filter((b) => b !== b1);
    const ingress = await startIngress(() => table([endpointOf(b1!)]), { maxAttempts: 2 });
    const result = await rawExchange(ingress.port, 'GET / HTTP/1.0\r\n\r\n');
    expect(result.data).toBe('');
    expect(ingress.stats().errors).toBe(1);
    // And with no endpoints at all, or no service.
    const empty = await startIngress(() => table([]));
    expect((await rawExchange(empty.port)).data).toBe('');
    const gone = await startIngress(() => undefined);
    expect((await rawExchange(gone.port)).data).toBe('');
    const broken = await startIngress(() => {
      throw new Error('table unavailable');
    });
    expect((await rawExchange(broken.port)).data).toBe('');
    expect(broken.stats().errors).toBe(1);
  });

  it('drains a task: open connections keep working, new ones go elsewhere', async () => {
    const [b1, b2, b3] = await threeBackends();
    const ingress = await startIngress(() => table([b1!, b2!, b3!].map((b) => endpointOf(b))));
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const first = await request(ingress.port, agent);
    const [drainedTask, connection] = first.split(' ');

    let drained = false;
    const draining = ingress.drain(drainedTask!, 600_000).then(() => {
      drained = true;
    });
    const fresh: string[] = [];
    for (let i = 0; i < 12; i++) fresh.push(await request(ingress.port));
    expect(tally(fresh)[drainedTask!]).toBeUndefined();
    // The kept-alive connection still reaches the same backend over the same backend connection.
    expect(await request(ingress.port, agent)).toBe(`${drainedTask} ${connection}`);
    expect(drained).toBe(false);
    agent.destroy();
    await draining;
    expect(ingress.stats().tasks.find((t) => t.taskId === drainedTask)!.connectionsActive).toBe(0);

    // undrain puts it back into rotation.
    ingress.undrain(drainedTask!);
    const after: string[] = [];
    for (let i = 0; i < 6; i++) after.push(await request(ingress.port));
    expect(tally(after)[drainedTask!]).toBe(2);
  });

  it('cuts connections still open when the drain grace ends', async () => {
    const [b1] = await threeBackends();
    const ingress = await startIngress(() => table([endpointOf(b1!)]));
    const socket = connect({ host: '127.0.0.1', port: ingress.port });
    const closed = new Promise<void>((r) => socket.on('close', () => r()));
    socket.on('error', () => {});
    // An HTTP request that is never finished keeps the connection open.
    socket.write('GET / HTTP/1.1\r\nHost: x\r\n');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    while (ingress.stats().tasks.length === 0) await new Promise((r) => setTimeout(r, 10));
    await ingress.drain('b1', 50);
    await closed;
    expect(ingress.stats().connectionsActive).toBe(0);
  });

  it('moves local connections in the relay it runs with: native holds no socket of theirs in the event loop', async () => {
    const [b1] = await threeBackends();
    const ingress = await startIngress(() => table([endpointOf(b1!)]));
    const socketsNow = () => process.getActiveResourcesInfo().filter((kind) => kind === 'TCPSocketWrap').length;
    // Sockets of earlier cases may still be closing.
    await new Promise((r) => setTimeout(r, 100));
    const before = socketsNow();
    const request = 'GET / HTTP/1.1\r\nHost: x\r\n\r\n';
    const clients: Socket[] = [];
    let answered = 0;
    for (let i = 0; i < 5; i++) {
      const client = connect({ host: '127.0.0.1', port: ingress.port });
      clients.push(client);
      client.write(request);
      const answer = await new Promise<string>((resolve) =>
        client.once('data', (chunk: Buffer) => resolve(`${chunk}`)),
      );
      expect(answer).toContain('b1 ');
      answered += Buffer.byteLength(answer);
    }
    // Per connection: the client and the backend's side either way; the ingress's two only when they stay in JS.
    expect(socketsNow() - before).toBe(clients.length * (relayMode === 'native' ? 2 : 4));
    await Promise.all(
      clients.map((client) => {
        const closed = new Promise((resolve) => client.once('close', resolve));
        client.end();
        return closed;
      }),
    );
    while (ingress.stats().connectionsActive > 0) await new Promise((r) => setTimeout(r, 10));
    expect(ingress.stats().bytesIn).toBe(clients.length * Buffer.byteLength(request));
    expect(ingress.stats().bytesOut).toBe(answered);
  });

  it('honours the draining list of the endpoint table', async () => {
    const [b1, b2, b3] = await threeBackends();
    const ingress = await startIngress(() =>
      table(
        [b1!, b2!, b3!].map((b) => endpointOf(b)),
        { draining: new Set(['b1', 'b3']) },
      ),
    );
    const bodies: string[] = [];
    for (let i = 0; i < 5; i++) bodies.push(await request(ingress.port));
    expect(tally(bodies)).toEqual({ b2: 5 });
  });

  it('sends a PROXY v2 header with the real client address', async () => {
    const backend = await proxyProtocolBackend('pp');
    backends.push(backend);
    const ingress = await startIngress(() => table([endpointOf(backend)], { proxyProtocol: true }));
    const { data, local } = await rawExchange(ingress.port);
    const seen = JSON.parse(data);
    expect(seen).toEqual({
      name: 'pp',
      sourceAddress: local.address,
      sourcePort: local.port,
      destinationAddress: '127.0.0.1',
      destinationPort: ingress.port,
    });
  });

  it('reaches tasks on another node through dialRemote and serveRemote', async () => {
    const list = await threeBackends();
    const addresses = new Map(list.map((b) => [b.name, `127.0.0.1:${b.port}`]));
    const mesh = await fakeMesh((taskId) => addresses.get(taskId));
    const ingress = await startIngress(() => table(list.map((b) => endpointOf(b, OTHER))), {
      dialRemote: mesh.dialRemote,
    });
    const bodies: string[] = [];
    for (let i = 0; i < 9; i++) bodies.push(await request(ingress.port));
    expect(tally(bodies)).toEqual({ b1: 3, b2: 3, b3: 3 });
    expect(mesh.dials()).toBe(9);
    // Keep-alive traffic over the hop.
    const agent = new Agent({ keepAlive: true, maxSockets: 2 });
    const more = await Promise.all(Array.from({ length: 20 }, () => request(ingress.port, agent)));
    agent.destroy();
    expect(more).toHaveLength(20);
  });

  it('retries elsewhere when the remote node cannot reach the task', async () => {
    const [b1, b2] = await threeBackends();
    // The remote node does not know b1 (already gone there): it answers unknown-task, and the ingress moves on.
    const mesh = await fakeMesh((taskId) => (taskId === 'b2' ? `127.0.0.1:${b2!.port}` : undefined));
    const ingress = await startIngress(() => table([endpointOf(b1!, OTHER), endpointOf(b2!, OTHER)]), {
      dialRemote: mesh.dialRemote,
    });
    const bodies: string[] = [];
    for (let i = 0; i < 6; i++) bodies.push(await request(ingress.port));
    expect(tally(bodies)).toEqual({ b2: 6 });
    expect(ingress.stats().tasks.find((t) => t.taskId === 'b1')!.errors).toBeGreaterThan(0);
  });

  it('treats a remote endpoint as failed when no mesh dialer is set, and a failing dialer likewise', async () => {
    const [b1, b2] = await threeBackends();
    const ingress = await startIngress(() => table([endpointOf(b1!, OTHER), endpointOf(b2!)]));
    for (let i = 0; i < 4; i++) expect((await request(ingress.port)).startsWith('b2 ')).toBe(true);
    const failing = await startIngress(() => table([endpointOf(b1!, OTHER), endpointOf(b2!)]), {
      dialRemote: () => Promise.reject(new Error('no route to peer')),
    });
    for (let i = 0; i < 4; i++) expect((await request(failing.port)).startsWith('b2 ')).toBe(true);
  });

  it('sends the PROXY header from the task node on the remote path', async () => {
    const backend = await proxyProtocolBackend('pp');
    backends.push(backend);
    const mesh = await fakeMesh(() => `127.0.0.1:${backend.port}`);
    const ingress = await startIngress(() => table([endpointOf(backend, OTHER)], { proxyProtocol: true }), {
      dialRemote: mesh.dialRemote,
    });
    const { data, local } = await rawExchange(ingress.port);
    expect(JSON.parse(data)).toMatchObject({ sourceAddress: local.address, sourcePort: local.port });
  });

  it('survives clients and backends that reset in the middle', async () => {
    const sockets = new Set<Socket>();
    const rude = createServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
      // Resets as soon as it has something to read.
      s.once('data', () => s.resetAndDestroy());
    });
    await new Promise<void>((r) => rude.listen(0, '127.0.0.1', () => r()));
    backends.push({ name: 'rude', server: rude, port: (rude.address() as { port: number }).port, sockets });
    const [b1] = await threeBackends();
    const ingress = await startIngress(() => table([endpointOf(backends[0]!), endpointOf(b1!)]));
    for (let i = 0; i < 10; i++) {
      // Half of these reach the rude backend and see the connection cut; none may crash anything.
      await request(ingress.port).catch(() => '');
      const client = connect({ host: '127.0.0.1', port: ingress.port });
      client.on('error', () => {});
      client.write('GET / HTTP/1.1\r\n');
      await new Promise<void>((r) => client.once('connect', () => r()));
      client.resetAndDestroy();
    }
    // Still serving.
    const bodies: string[] = [];
    for (let i = 0; i < 4; i++) bodies.push(await request(ingress.port).catch(() => 'cut'));
    expect(bodies.filter((b) => b.startsWith('b1 '))).toHaveLength(2);
    while (ingress.stats().connectionsActive > 0) await new Promise((r) => setTimeout(r, 10));
  });

  it('carries half-closed connections to the end', async () => {
    // An echo backend: the client half-closes after sending, and still gets every byte back.
    const sockets = new Set<Socket>();
    const echo = createServer({ allowHalfOpen: true }, (s) => {
      sockets.add(s);
      s.on('error', () => {});
      s.pipe(s);
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
    const backend = { name: 'echo', server: echo, port: (echo.address() as { port: number }).port, sockets };
    backends.push(backend);
    const ingress = await startIngress(() => table([endpointOf(backend)]));
    const payload = 'x'.repeat(1024 * 1024);
    const echoed = await new Promise<string>((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port: ingress.port, allowHalfOpen: true });
      let data = '';
      socket.setEncoding('utf8');
      socket.on('data', (c: string) => {
        data += c;
      });
      socket.on('end', () => {
        socket.end();
        resolve(data);
      });
      socket.on('error', reject);
      socket.end(payload);
    });
    expect(echoed.length).toBe(payload.length);
    while (ingress.stats().connectionsActive > 0) await new Promise((r) => setTimeout(r, 10));
    const stats = ingress.stats();
    expect(stats.bytesIn).toBe(payload.length);
    expect(stats.bytesOut).toBe(payload.length);
  });

  it('moves large transfers intact through slow readers: directly, over a TCP hop, an in-memory hop and an HTTP/2 tunnel', async () => {
    // A backend that sends 32 MiB of random bytes (more than loopback's socket buffers hold): any reuse of a read
    // buffer while a write still points into it would show up as a different hash.
    const payload = randomBytes(32 * 1024 * 1024);
    const digest = createHash('sha256').update(payload).digest('hex');
    const sockets = new Set<Socket>();
    const source = createServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
      s.end(payload);
    });
    await new Promise<void>((r) => source.listen(0, '127.0.0.1', () => r()));
    const backend = { name: 'bulk', server: source, port: (source.address() as { port: number }).port, sockets };
    backends.push(backend);
    const tcpMesh = await fakeMesh(() => `127.0.0.1:${backend.port}`);
    // The mesh stream as a plain in-memory Duplex (not a net.Socket), as a libp2p stream adapter would be.
    const memoryDial: DialRemote = async (_endpoint, header) => {
      const [near, far] = duplexPair();
      void serveRemote(far, () => `127.0.0.1:${backend.port}`);
      near.write(header);
      return near;
    };
    // The daemon's mesh hop: every connection an HTTP/2 stream of one tunnel (here over an in-memory transport).
    const tunnelServer = new TunnelServer((stream) => void serveRemote(stream, () => `127.0.0.1:${backend.port}`));
    const tunnels = new TunnelDialer(async () => {
      const [near, far] = duplexPair();
      tunnelServer.serve(far);
      return near;
    });
    const ingresses = [
      await startIngress(() => table([endpointOf(backend)])),
      await startIngress(() => table([endpointOf(backend, OTHER)]), { dialRemote: tcpMesh.dialRemote }),
      await startIngress(() => table([endpointOf(backend, OTHER)]), { dialRemote: memoryDial }),
      await startIngress(() => table([endpointOf(backend, OTHER)]), {
        dialRemote: (endpoint, header, signal) => tunnels.dial(endpoint.nodeId, header, signal),
      }),
    ];
    for (const ingress of ingresses) {
      const received = await new Promise<string>((resolve, reject) => {
        const hash = createHash('sha256');
        const socket = connect({ host: '127.0.0.1', port: ingress.port });
        // Not reading at first, so the kernel buffers fill and the ingress's writes toward us queue up.
        socket.pause();
        setTimeout(() => socket.resume(), 200);
        let chunks = 0;
        socket.on('data', (c: Buffer) => {
          hash.update(c);
          // A slow reader now and then, so that writes toward it queue up and reading from the backend pauses.
          if (++chunks % 16 === 0) {
            socket.pause();
            setTimeout(() => socket.resume(), 2);
          }
        });
        socket.on('end', () => resolve(hash.digest('hex')));
        socket.on('error', reject);
      });
      expect(received).toBe(digest);
    }
    tunnels.close();
    tunnelServer.close();
  });
});
