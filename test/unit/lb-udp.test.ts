// The UDP ingress (daemon/lb/udp-ingress.ts) and its mesh hop (udp-relay.ts, serveRemote with a udp header), on
// real UDP sockets on loopback: flows balanced and kept on their task, answers back from the published port,
// retries before the first answer, idle flows ended, drains, the flow limit, and the framing.
import { createSocket } from 'node:dgram';
import { duplexPair } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { DrainTracker } from '../../daemon/lb/drain-tracker.ts';
import type { Endpoint, ServiceEndpoints } from '../../daemon/lb/endpoints.ts';
import { serveRemote } from '../../daemon/lb/remote.ts';
import { UdpIngress, type UdpIngressOptions } from '../../daemon/lb/udp-ingress.ts';
import { DatagramReader, frameDatagram } from '../../daemon/lb/udp-relay.ts';

const NODE = 'n1';
const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

/** A UDP task on loopback that answers each datagram with "NAME:payload". */
async function udpTask(name: string): Promise<{ address: string; received: string[] }> {
  const socket = createSocket('udp4');
  const received: string[] = [];
  socket.on('message', (message, from) => {
    received.push(message.toString());
    socket.send(Buffer.concat([Buffer.from(`${name}:`), message]), from.port, from.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
  cleanup.push(() => socket.close());
  return { address: `127.0.0.1:${socket.address().port}`, received };
}

/** An address where nothing listens (bound once, then closed): datagrams to it come back as ECONNREFUSED. */
async function closedUdpPort(): Promise<string> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
  const port = socket.address().port;
  await new Promise<void>((resolve) => socket.close(() => resolve()));
  return `127.0.0.1:${port}`;
}

function view(endpoints: Endpoint[], over: Partial<ServiceEndpoints> = {}): ServiceEndpoints {
  return {
    serviceId: 's1',
    serviceName: 'dns',
    algorithm: 'round-robin',
    proxyProtocol: false,
    endpoints,
    draining: [],
    ...over,
  };
}

async function startIngress(
  services: () => ServiceEndpoints | undefined,
  over: Partial<UdpIngressOptions> = {},
): Promise<UdpIngress> {
  const ingress = new UdpIngress({ nodeId: NODE, port: 0, host: '127.0.0.1', services, ...over });
  await ingress.listen();
  cleanup.push(() => ingress.close());
  return ingress;
}

/** A client socket of its own (its own flow); ask() sends one datagram and waits for one answer. */
async function udpClient(port: number) {
  const socket = createSocket('udp4');
  const answers: string[] = [];
  let waiting: ((answer: string) => void) | undefined;
  socket.on('message', (message) => {
    answers.push(message.toString());
    waiting?.(message.toString());
    waiting = undefined;
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
  socket.connect(port, '127.0.0.1');
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  cleanup.push(() => socket.close());
  return {
    socket,
    answers,
    ask(payload: string | Buffer, timeoutMs = 3000): Promise<string> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no answer to ${String(payload).slice(0, 20)}`)), timeoutMs);
        waiting = (answer) => {
          clearTimeout(timer);
          resolve(answer);
        };
        socket.send(payload);
      });
    },
  };
}

const local = (taskId: string, address: string): Endpoint => ({ taskId, nodeId: NODE, address });

describe('UDP ingress, local tasks', () => {
  it('balances flows over the tasks, keeps each flow on its task, and answers from the published port', async () => {
    const [a, b, c] = await Promise.all([udpTask('a'), udpTask('b'), udpTask('c')]);
    const endpoints = [local('ta', a.address), local('tb', b.address), local('tc', c.address)];
    const ingress = await startIngress(() => view(endpoints));
    const clients = await Promise.all([0, 1, 2].map(() => udpClient(ingress.port)));
    const first = [];
    for (const client of clients) first.push(await client.ask('hello'));
    expect(first.map((answer) => answer.split(':')[0]).sort()).toEqual(['a', 'b', 'c']);
    // Each client's later datagrams stay with the task its flow started on.
    for (const [i, client] of clients.entries()) {
      for (let n = 0; n < 3; n++) expect((await client.ask(`more ${n}`)).split(':')[0]).toBe(first[i]!.split(':')[0]);
    }
    const stats = ingress.stats();
    expect(stats).toMatchObject({ serviceName: 'dns', connectionsTotal: 3, connectionsActive: 3, errors: 0 });
    expect(stats.bytesIn).toBe(3 * ('hello'.length + 3 * 'more n'.length));
    expect(stats.tasks.map((t) => [t.taskId, t.connectionsTotal]).sort()).toEqual([
      ['ta', 1],
      ['tb', 1],
      ['tc', 1],
    ]);
  });

  it('retries a flow whose task port is closed on another task, with the same datagram, counting the failure', async () => {
    const dead = await closedUdpPort();
    const live = await udpTask('live');
    const endpoints = [local('dead', dead), local('live', live.address)];
    const ingress = await startIngress(() => view(endpoints));
    for (let n = 0; n < 4; n++) {
      const client = await udpClient(ingress.port);
      expect(await client.ask(`q${n}`)).toBe(`live:q${n}`);
    }
    expect(live.received).toEqual(['q0', 'q1', 'q2', 'q3']);
    const stats = ingress.stats();
    const deadStats = stats.tasks.find((t) => t.taskId === 'dead');
    expect(deadStats?.errors).toBeGreaterThanOrEqual(1);
    expect(stats.retries).toBeGreaterThanOrEqual(1);
    expect(stats.errors).toBe(0);
  });

  it('does not send datagrams older than the retry window again: a silent task that stops loses the flow', async () => {
    // A one-way protocol (syslog, statsd): the task never answers, so the flow never learns it was heard.
    const silent = createSocket('udp4');
    const heard: string[] = [];
    silent.on('message', (message) => heard.push(message.toString()));
    await new Promise<void>((resolve) => silent.bind(0, '127.0.0.1', () => resolve()));
    const silentAddress = `127.0.0.1:${silent.address().port}`;
    const other = await udpTask('other');
    const ingress = await startIngress(() => view([local('silent', silentAddress), local('other', other.address)]));
    const client = await udpClient(ingress.port);
    client.socket.send('first');
    await expect.poll(() => heard).toEqual(['first']);
    await new Promise<void>((resolve) => silent.close(() => resolve()));
    await new Promise((resolve) => setTimeout(resolve, 2200));
    // Its port is closed now: the next datagram fails there, and "first" is not replayed to the other task.
    client.socket.send('second');
    await expect.poll(() => ingress.stats().connectionsActive).toBe(0);
    expect(await client.ask('third')).toBe('other:third');
    expect(other.received).toEqual(['third']);
  });

  it('ends idle flows; the next datagram starts a new flow on the next task', async () => {
    const [a, b] = await Promise.all([udpTask('a'), udpTask('b')]);
    const ingress = await startIngress(() => view([local('ta', a.address), local('tb', b.address)]), {
      idleTimeoutMs: 200,
    });
    const client = await udpClient(ingress.port);
    const first = (await client.ask('one')).split(':')[0];
    expect((await client.ask('two')).split(':')[0]).toBe(first);
    await expect.poll(() => ingress.stats().connectionsActive, { timeout: 3000 }).toBe(0);
    expect((await client.ask('three')).split(':')[0]).not.toBe(first);
    expect(ingress.stats().connectionsTotal).toBe(2);
  });

  it('drains: a draining task gets no new flow, its open flow is cut after the grace period', async () => {
    const [a, b] = await Promise.all([udpTask('a'), udpTask('b')]);
    const ingress = await startIngress(() => view([local('ta', a.address), local('tb', b.address)]));
    const onA = await udpClient(ingress.port);
    expect(await onA.ask('x')).toBe('a:x');
    const started = Date.now();
    const drained = ingress.drain('ta', 300);
    // A new client goes to b, whatever round-robin says.
    for (let n = 0; n < 3; n++) expect(await (await udpClient(ingress.port)).ask('y')).toBe('b:y');
    // The open flow still reaches a until the grace period ends...
    expect(await onA.ask('z')).toBe('a:z');
    await drained;
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    // ...and then its next datagram starts a flow on b.
    expect(await onA.ask('after')).toBe('b:after');
  });

  it('drops the datagrams of new clients beyond maxFlows, counted, and takes them again once a flow ends', async () => {
    const a = await udpTask('a');
    const ingress = await startIngress(() => view([local('ta', a.address)]), { maxFlows: 2, idleTimeoutMs: 300 });
    const [one, two, three] = await Promise.all([0, 1, 2].map(() => udpClient(ingress.port)));
    await one!.ask('1');
    await two!.ask('2');
    await expect(three!.ask('3', 300)).rejects.toThrow(/no answer/);
    expect(ingress.stats().errors).toBe(1);
    await expect.poll(() => ingress.stats().connectionsActive, { timeout: 3000 }).toBe(0);
    expect(await three!.ask('3 again')).toBe('a:3 again');
  });

  it('with no task, counts the flow as failed and answers nothing', async () => {
    const ingress = await startIngress(() => view([]));
    const client = await udpClient(ingress.port);
    await expect(client.ask('anyone?', 300)).rejects.toThrow(/no answer/);
    expect(ingress.stats()).toMatchObject({ connectionsTotal: 1, connectionsActive: 0, errors: 1 });
  });
});

describe('UDP over the mesh hop', () => {
  /** dialRemote as the daemon's, with a stream pair for the mesh and serveRemote as the far node. */
  function meshTo(resolve: (taskId: string) => string | undefined, drains?: DrainTracker) {
    const served: Promise<string>[] = [];
    const dialRemote = async (_endpoint: Endpoint, header: Buffer) => {
      const [ingressSide, nodeSide] = duplexPair();
      served.push(serveRemote(nodeSide, resolve, drains ? { drains } : {}));
      ingressSide.write(header);
      cleanup.push(() => ingressSide.destroy());
      return ingressSide;
    };
    return { dialRemote, served };
  }

  it('carries a flow to a task on another node: empty, small and 60 KB datagrams, in order', async () => {
    const task = await udpTask('far');
    const { dialRemote, served } = meshTo((id) => (id === 'tf' ? task.address : undefined));
    const ingress = await startIngress(() => view([{ taskId: 'tf', nodeId: 'n2', address: '10.0.0.9:1' }]), {
      dialRemote,
    });
    const client = await udpClient(ingress.port);
    expect(await client.ask('')).toBe('far:');
    expect(await client.ask('small')).toBe('far:small');
    const big = Buffer.alloc(60_000, 7);
    const answer = await client.ask(big);
    expect(answer.length).toBe(4 + 60_000);
    // One stream for the whole flow.
    expect(served).toHaveLength(1);
    expect(ingress.stats().tasks[0]).toMatchObject({ taskId: 'tf', connectionsTotal: 1, errors: 0 });
  });

  it('a node that does not know the task, or whose task port is closed, sends the flow to another task', async () => {
    const task = await udpTask('ok');
    const dead = await closedUdpPort();
    const { dialRemote, served } = meshTo((id) => ({ dead, ok: task.address })[id as 'dead' | 'ok']);
    const endpoints: Endpoint[] = [
      { taskId: 'gone', nodeId: 'n2', address: '10.0.0.9:1' },
      { taskId: 'dead', nodeId: 'n2', address: '10.0.0.9:2' },
      { taskId: 'ok', nodeId: 'n2', address: '10.0.0.9:3' },
    ];
    const ingress = await startIngress(() => view(endpoints), { dialRemote });
    const client = await udpClient(ingress.port);
    expect(await client.ask('hi')).toBe('ok:hi');
    expect(task.received).toEqual(['hi']);
    expect(await Promise.all(served)).toEqual(['unknown-task', 'served', 'served']);
    const errors = Object.fromEntries(ingress.stats().tasks.map((t) => [t.taskId, t.errors]));
    expect(errors).toEqual({ gone: 1, dead: 1, ok: 0 });
  });

  it('the far node refuses a drained task, and the flow goes elsewhere without counting an error', async () => {
    const [a, b] = await Promise.all([udpTask('a'), udpTask('b')]);
    const drains = new DrainTracker();
    void drains.drain('ta', 60_000);
    const { dialRemote } = meshTo((id) => ({ ta: a.address, tb: b.address })[id as 'ta' | 'tb'], drains);
    const endpoints: Endpoint[] = [
      { taskId: 'ta', nodeId: 'n2', address: '10.0.0.9:1' },
      { taskId: 'tb', nodeId: 'n2', address: '10.0.0.9:2' },
    ];
    const ingress = await startIngress(() => view(endpoints), { dialRemote });
    expect(await (await udpClient(ingress.port)).ask('q')).toBe('b:q');
    expect(a.received).toEqual([]);
    expect(ingress.stats().tasks.find((t) => t.taskId === 'ta')?.errors ?? 0).toBe(0);
    drains.undrain('ta');
  });
});

describe('datagram framing', () => {
  it('splits frames however the stream cuts them', () => {
    const datagrams = [Buffer.alloc(0), Buffer.from('a'), Buffer.alloc(65_507, 1), Buffer.from('end')];
    const bytes = Buffer.concat(datagrams.map(frameDatagram));
    for (const cut of [1, 2, 3, 7, 1000, bytes.length]) {
      const out: Buffer[] = [];
      const reader = new DatagramReader((d) => out.push(Buffer.from(d)));
      for (let at = 0; at < bytes.length; at += cut) reader.push(bytes.subarray(at, at + cut));
      expect(out).toEqual(datagrams);
    }
  });
});
