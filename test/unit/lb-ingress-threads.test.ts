// Published ports served by worker threads (real worker_threads, real sockets on loopback): connections reach local
// tasks directly and remote ones through the main thread's relay, every thread's counters are reported, drains
// wait for the threads' open connections, a thread that dies is started again, and the tunnel relay refuses garbage.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { IngressThreads } from '../../daemon/lb/ingress-threads.ts';
import { serveRemote } from '../../daemon/lb/remote.ts';
import type { TableService } from '../../daemon/lb/table.ts';
import { relayedTunnels, serveTunnelRelay } from '../../daemon/lb/thread-relay.ts';
import { TunnelServer } from '../../daemon/lb/tunnel.ts';
import { dialLoopback } from '../helpers/loopback-dial.ts';
import { freePort, readAll } from '../helpers/loopback-tcp.ts';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function listen(server: Server): Promise<number> {
  cleanups.push(() => void server.close());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as { port: number }).port;
}

/** A task that answers `answer` and closes, or, with hold, keeps the connection until the client sends a byte. */
async function backend(answer: string, hold = false): Promise<number> {
  const open = new Set<Socket>();
  cleanups.push(() => {
    for (const socket of open) socket.destroy();
  });
  return listen(
    createServer((socket) => {
      open.add(socket);
      socket.on('close', () => open.delete(socket));
      socket.on('error', () => {});
      if (!hold) {
        socket.end(answer);
        return;
      }
      socket.write(answer);
      socket.once('data', () => socket.end());
    }),
  );
}

/** A connection that stays open: resolves once the backend's first bytes arrived. */
function openHeld(port: number): Promise<{ socket: Socket; first: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.setEncoding('utf8');
    socket.once('data', (first: string) => resolve({ socket, first }));
    socket.once('error', reject);
  });
}

function tableWith(published: number, endpoints: TableService['endpoints']): TableService[] {
  return [
    {
      serviceId: 'svc',
      serviceName: 'web',
      algorithm: 'round-robin',
      ports: [{ published, protocol: 'tcp', mode: 'ingress', proxyProtocol: false }],
      endpoints,
      draining: [],
    },
  ];
}

/**
 * The other node: its tunnel server, serving its task `remote-task`, on a loopback listener that stands in for the
 * mesh (each connection is one tunnel's transport).
 */
async function remoteNode(answer: string): Promise<number> {
  const task = `127.0.0.1:${await backend(answer)}`;
  const tunnels = new TunnelServer(
    (stream) => void serveRemote(stream, (id) => (id === 'remote-task' ? task : undefined)),
  );
  cleanups.push(() => tunnels.close());
  return listen(createServer((transport) => tunnels.serve(transport)));
}

/** Threads whose tunnels to peers are loopback connections to remotePort; `opened` gets the PeerId of each. */
function startThreads(threads: number, opened: string[], remotePort: number): IngressThreads {
  const set = new IngressThreads({
    threads,
    nodeId: 'n1',
    host: '127.0.0.1',
    openTunnel: (peerId, signal) => {
      opened.push(peerId);
      return dialLoopback('127.0.0.1', remotePort, Buffer.alloc(0), signal);
    },
    log: () => {},
  });
  cleanups.push(() => set.close());
  return set;
}

/**
 * Two ingress threads publishing one port over local tasks that each answer their name and close; resolves once both
 * threads listen (one stats entry per listening ingress), or the first would take every connection.
 */
async function twoThreadsOverTasks(names: string[]): Promise<{ published: number; set: IngressThreads }> {
  const published = await freePort();
  const set = startThreads(2, [], 1);
  const endpoints = [];
  for (const name of names)
    endpoints.push({ taskId: name, nodeId: 'n1', peerId: 'p1', address: `127.0.0.1:${await backend(name)}` });
  set.update(tableWith(published, endpoints));
  await expect.poll(async () => (await set.stats()).length, { timeout: 10_000 }).toBe(2);
  return { published, set };
}

describe('ingress threads', () => {
  it('serve local tasks directly and remote ones through tunnels the main thread relays', async () => {
    const published = await freePort();
    const local = `127.0.0.1:${await backend('local')}`;
    const opened: string[] = [];
    const set = startThreads(2, opened, await remoteNode('remote'));
    set.update(
      tableWith(published, [
        { taskId: 'local-task', nodeId: 'n1', peerId: 'p1', address: local },
        { taskId: 'remote-task', nodeId: 'n2', peerId: 'p2', address: '10.0.0.2:80' },
      ]),
    );
    await expect.poll(() => set.listening(), { timeout: 10_000 }).toEqual([`${published}/tcp`]);

    const answers = [];
    for (let i = 0; i < 20; i++) answers.push(await readAll(published));
    expect(new Set(answers)).toEqual(new Set(['local', 'remote']));
    // One tunnel per thread that forwarded to the other node, not one per connection.
    expect(new Set(opened)).toEqual(new Set(['p2']));
    expect(opened.length).toBeLessThanOrEqual(2);

    // One entry per thread that took connections (the kernel spreads them); together they saw every one.
    const stats = await set.stats();
    // No data path here (no fetchTicket): every tunnel went through the relay.
    expect(set.tunnelCounts()).toEqual({ direct: 0, mesh: opened.length, native: 0, mux: 0 });
    expect(stats.every((s) => s.port === published && s.serviceName === 'web' && s.errors === 0)).toBe(true);
    expect(stats.reduce((sum, s) => sum + s.connectionsTotal, 0)).toBe(20);
    const tasks = stats.flatMap((s) => s.tasks);
    const forwarded = (taskId: string) =>
      tasks.filter((t) => t.taskId === taskId).reduce((sum, t) => sum + t.connectionsTotal, 0);
    expect(forwarded('local-task') + forwarded('remote-task')).toBe(20);
    expect(forwarded('remote-task')).toBe(answers.filter((a) => a === 'remote').length);
  });

  it('rotate round-robin as one over the threads: new connections go to each task in turn', async () => {
    const { published, set } = await twoThreadsOverTasks(['a', 'b', 'c']);
    const answers = [];
    for (let i = 0; i < 12; i++) answers.push(await readAll(published));
    // Whichever thread took each connection (the kernel spreads them), the rotation is one.
    expect(answers).toEqual(['a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c']);
    const threadsUsed = (await set.stats()).filter((s) => s.connectionsTotal > 0).length;
    expect(threadsUsed).toBe(2);
  });

  it('answer every one of 1,000 short connections in a row, from tasks that answer and close at once', async () => {
    // Such a connection can end in the native relay before the ingress thread is back from handing it over, and
    // the next one accepted gets its descriptor numbers. The relay once registered the second socket from the
    // ingress thread after the first; when that failed on a descriptor already closed, it cut the first's number,
    // by then the next client's: about 1 connection in 600 ended with no answer.
    const { published } = await twoThreadsOverTasks(['a', 'b', 'c']);
    const unanswered: string[] = [];
    for (let i = 0; i < 1000; i++) {
      const answer = await readAll(published);
      if (answer.length !== 1) unanswered.push(`connection ${i}: ${JSON.stringify(answer)}`);
    }
    expect(unanswered).toEqual([]);
  }, 60_000);

  it('drain waits for the open connections of every thread, and no new connection reaches the task', async () => {
    const published = await freePort();
    const held = `127.0.0.1:${await backend('held', true)}`;
    const other = `127.0.0.1:${await backend('other')}`;
    const set = startThreads(2, [], 1);
    set.update(
      tableWith(published, [
        { taskId: 'held-task', nodeId: 'n1', peerId: 'p1', address: held },
        { taskId: 'other-task', nodeId: 'n1', peerId: 'p1', address: other },
      ]),
    );
    await expect.poll(() => set.listening(), { timeout: 10_000 }).toEqual([`${published}/tcp`]);
    // Round-robin per thread: a few connections land one on held-task in whichever thread took them.
    const open: Socket[] = [];
    for (let i = 0; i < 6; i++) {
      const { socket, first } = await openHeld(published).catch(() => ({ socket: undefined, first: '' }));
      if (first === 'held') open.push(socket!);
      else socket?.destroy();
    }
    expect(open.length).toBeGreaterThan(0);

    let drained = false;
    const draining = set.drain('held-task', 30_000).then(() => {
      drained = true;
    });
    for (let i = 0; i < 6; i++) expect(await readAll(published)).toBe('other');
    expect(drained).toBe(false);
    for (const socket of open) socket.end('bye');
    await draining;
    expect(drained).toBe(true);
  });

  it('start a thread that died again, with the current table', async () => {
    const published = await freePort();
    const set = startThreads(1, [], 1);
    set.update(
      tableWith(published, [{ taskId: 't', nodeId: 'n1', peerId: 'p1', address: `127.0.0.1:${await backend('up')}` }]),
    );
    await expect.poll(() => set.listening(), { timeout: 10_000 }).toEqual([`${published}/tcp`]);
    // What an uncaught exception in the thread would do.
    const [thread] = (set as unknown as { threads: Array<{ worker: Worker }> }).threads;
    await thread!.worker.terminate();
    expect(set.listening()).toEqual([]);
    await expect.poll(() => set.listening(), { timeout: 10_000 }).toEqual([`${published}/tcp`]);
    expect(await readAll(published)).toBe('up');
  });

  it('start no thread while nothing is published, and stop listening on close', async () => {
    const published = await freePort();
    const set = startThreads(2, [], 1);
    set.update([]);
    expect((set as unknown as { threads: unknown[] }).threads).toHaveLength(0);
    set.update(
      tableWith(published, [{ taskId: 't', nodeId: 'n1', peerId: 'p1', address: `127.0.0.1:${await backend('up')}` }]),
    );
    await expect.poll(() => set.listening(), { timeout: 10_000 }).toEqual([`${published}/tcp`]);
    await set.close();
    expect(await readAll(published)).toBe('');
  });
});

describe('tunnel relay', () => {
  it('opens a tunnel to the PeerId asked for and carries its bytes both ways; garbage is closed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'relay-test-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'relay.sock');
    const asked: string[] = [];
    const echo = await listen(createServer((socket) => socket.pipe(socket)));
    const relay = serveTunnelRelay(
      path,
      (peerId, signal) => {
        asked.push(peerId);
        return dialLoopback('127.0.0.1', echo, Buffer.alloc(0), signal);
      },
      () => {},
    );
    cleanups.push(() => void relay.server.close());

    const tunnel = await relayedTunnels(path)('12D3KooWpeer', new AbortController().signal);
    tunnel.write('ping');
    let got = '';
    tunnel.setEncoding('utf8');
    tunnel.on('data', (chunk: string) => {
      got += chunk;
    });
    await expect.poll(() => got).toBe('ping');
    expect(asked).toEqual(['12D3KooWpeer']);
    expect(relay.openCount).toBe(1);
    tunnel.destroy();
    await expect.poll(() => relay.openCount).toBe(0);

    // A PeerId length of 0: the connection is closed, no tunnel opened.
    const closed = await new Promise<boolean>((resolve) => {
      const socket = connect({ path }, () => socket.write(Buffer.from([0, 1, 2])));
      socket.on('close', () => resolve(true));
      socket.on('error', () => {});
    });
    expect(closed).toBe(true);
    expect(asked).toHaveLength(1);
    expect(existsSync(path)).toBe(true);
  });
});
