// The mesh hop's header and the node-side handler (serveRemote): strict validation, status bytes, and hostile
// streams that must close without an exception escaping.
import { createServer, type Server, type Socket } from 'node:net';
import { type Duplex, duplexPair } from 'node:stream';
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DrainTracker } from '../../daemon/lb/drain-tracker.ts';
import { hasUnforwardedReads } from '../../daemon/lb/pump.ts';
import {
  connectTask,
  decodeRemoteHeader,
  encodeRemoteHeader,
  REMOTE_STATUS,
  RemoteHeaderError,
  serveRemote,
} from '../../daemon/lb/remote.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });
const client = { sourceAddress: '192.0.2.7', sourcePort: 5555, destinationAddress: '127.0.0.1', destinationPort: 80 };

describe('remote header', () => {
  it('round-trips with and without a client address', () => {
    for (const header of [{ taskId: 't1' }, { taskId: 't2', client }, { taskId: 't3', udp: true }]) {
      const bytes = encodeRemoteHeader(header);
      expect(bytes.readUInt16BE(0)).toBe(bytes.length - 2);
      expect(decodeRemoteHeader(bytes.subarray(2))).toEqual(header);
    }
  });

  const bad: Array<[string, unknown]> = [
    ['an array', [1, 't']],
    ['a string', 'hello'],
    ['a wrong version', { v: 2, t: 't' }],
    ['no task', { v: 1 }],
    ['an empty task', { v: 1, t: '' }],
    ['a numeric task', { v: 1, t: 7 }],
    ['a huge task ID', { v: 1, t: 'x'.repeat(200) }],
    ['an unknown field', { v: 1, t: 't', x: 1 }],
    ['a short client', { v: 1, t: 't', c: ['1.2.3.4', 1, '1.2.3.4'] }],
    ['a hostname', { v: 1, t: 't', c: ['example.com', 1, '1.2.3.4', 2] }],
    ['a port out of range', { v: 1, t: 't', c: ['1.2.3.4', 65536, '1.2.3.4', 2] }],
    ['a fractional port', { v: 1, t: 't', c: ['1.2.3.4', 1.5, '1.2.3.4', 2] }],
    ['a udp flag other than 1', { v: 1, t: 't', u: true }],
    ['a udp flow with a PROXY client', { v: 1, t: 't', u: 1, c: ['1.2.3.4', 1, '1.2.3.4', 2] }],
  ];
  for (const [what, value] of bad) {
    it(`rejects ${what}`, () => {
      expect(() => decodeRemoteHeader(packr.pack(value))).toThrow(RemoteHeaderError);
    });
  }

  it('rejects bytes that are not msgpack', () => {
    expect(() => decodeRemoteHeader(Buffer.from([0xc1]))).toThrow(RemoteHeaderError);
  });
});

function collect(stream: Duplex): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('close', () => resolve(Buffer.concat(chunks)));
    stream.on('error', () => resolve(Buffer.concat(chunks)));
  });
}

let echo: Server;
let echoPort = 0;
const echoSockets = new Set<Socket>();
beforeAll(async () => {
  echo = createServer((s) => {
    echoSockets.add(s);
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
  echoPort = (echo.address() as { port: number }).port;
});
afterAll(async () => {
  for (const s of echoSockets) s.destroy();
  await new Promise<void>((r) => echo.close(() => r()));
});

describe('serveRemote', () => {
  it('connects to the task, answers ok, and carries bytes both ways', async () => {
    const [ingress, node] = duplexPair();
    const served = serveRemote(node, (id) => (id === 't1' ? `127.0.0.1:${echoPort}` : undefined));
    const received = collect(ingress);
    ingress.write(encodeRemoteHeader({ taskId: 't1' }));
    // Bytes sent right behind the header wait for the backend rather than being lost.
    ingress.write('ping');
    expect(await served).toBe('served');
    ingress.end();
    const bytes = await received;
    expect(bytes[0]).toBe(REMOTE_STATUS.ok);
    expect(bytes.subarray(1).toString()).toBe('ping');
  });

  const refusals: Array<[string, () => Buffer, string, number]> = [
    ['an unknown task', () => encodeRemoteHeader({ taskId: 'nope' }), 'unknown-task', REMOTE_STATUS.unknownTask],
    ['a zero length', () => Buffer.from([0, 0]), 'bad-header', REMOTE_STATUS.badHeader],
    ['an oversized length', () => Buffer.from([0xff, 0xff, 1, 2, 3]), 'bad-header', REMOTE_STATUS.badHeader],
    [
      'an invalid header',
      () => {
        const p = packr.pack({ v: 1, t: 5 });
        return Buffer.concat([Buffer.from([0, p.length]), p]);
      },
      'bad-header',
      REMOTE_STATUS.badHeader,
    ],
  ];
  for (const [what, bytes, result, status] of refusals) {
    it(`refuses ${what} with a status byte and closes`, async () => {
      const [ingress, node] = duplexPair();
      const served = serveRemote(node, (id) => (id === 't1' ? `127.0.0.1:${echoPort}` : undefined));
      const received = collect(ingress);
      ingress.write(bytes());
      expect(await served).toBe(result);
      expect([...(await received)]).toEqual([status]);
    });
  }

  it('reports a task that refuses connections', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const [ingress, node] = duplexPair();
    const served = serveRemote(node, () => `127.0.0.1:${port}`);
    const received = collect(ingress);
    ingress.write(encodeRemoteHeader({ taskId: 't1' }));
    expect(await served).toBe('connect-failed');
    expect([...(await received)]).toEqual([REMOTE_STATUS.connectFailed]);
  });

  it('treats a resolver that throws as an unknown task', async () => {
    const [ingress, node] = duplexPair();
    const served = serveRemote(node, () => {
      throw new Error('store unavailable');
    });
    const received = collect(ingress);
    ingress.write(encodeRemoteHeader({ taskId: 't1' }));
    expect(await served).toBe('unknown-task');
    expect([...(await received)]).toEqual([REMOTE_STATUS.unknownTask]);
  });

  it('gives up on a header that never completes', async () => {
    const [ingress, node] = duplexPair();
    const served = serveRemote(node, () => `127.0.0.1:${echoPort}`, { timeoutMs: 50 });
    const received = collect(ingress);
    ingress.write(Buffer.from([0, 10, 1]));
    expect(await served).toBe('bad-header');
    expect([...(await received)]).toEqual([REMOTE_STATUS.badHeader]);
  });

  it('survives a stream that errors or ends before the header', async () => {
    const [ingress, node] = duplexPair();
    const served = serveRemote(node, () => `127.0.0.1:${echoPort}`);
    node.destroy(new Error('reset by peer'));
    expect(await served).toBe('closed');
    ingress.destroy();
    const [ingress2, node2] = duplexPair();
    const served2 = serveRemote(node2, () => `127.0.0.1:${echoPort}`);
    ingress2.end(Buffer.from([0]));
    node2.destroy();
    expect(await served2).toBe('closed');
  });

  it('refuses a draining task with its own status, and a drain waits for the streams already served', async () => {
    const drains = new DrainTracker();
    const resolve = () => `127.0.0.1:${echoPort}`;
    const [ingress, node] = duplexPair();
    const served = serveRemote(node, resolve, { drains });
    const received = collect(ingress);
    ingress.write(encodeRemoteHeader({ taskId: 't1' }));
    expect(await served).toBe('served');
    expect(drains.openCount('t1')).toBe(1);

    let drained = false;
    const drain = drains.drain('t1', 10_000).then(() => {
      drained = true;
    });
    // A stream that arrives once the drain began is refused, so its ingress tries another task.
    const [late, lateNode] = duplexPair();
    const lateServed = serveRemote(lateNode, resolve, { drains });
    const lateReceived = collect(late);
    late.write(encodeRemoteHeader({ taskId: 't1' }));
    expect(await lateServed).toBe('draining');
    expect([...(await lateReceived)]).toEqual([REMOTE_STATUS.draining]);

    // The open stream still works and holds the drain until it is done.
    ingress.write('still here');
    await new Promise((r) => setTimeout(r, 50));
    expect(drained).toBe(false);
    ingress.end();
    await drain;
    expect((await received).subarray(1).toString()).toBe('still here');
    expect(drains.openCount('t1')).toBe(0);
  });

  it('a drain that runs out of grace cuts the served streams', async () => {
    const drains = new DrainTracker();
    const [ingress, node] = duplexPair();
    const served = serveRemote(node, () => `127.0.0.1:${echoPort}`, { drains });
    const received = collect(ingress);
    ingress.write(encodeRemoteHeader({ taskId: 't1' }));
    expect(await served).toBe('served');
    await drains.drain('t1', 50);
    await received;
    expect(node.destroyed).toBe(true);
    expect(drains.openCount('t1')).toBe(0);
  });
});

describe('connectTask', () => {
  /** A task that speaks first: it sends a banner as soon as a connection is accepted. */
  async function bannerTask(): Promise<{ server: Server; port: number }> {
    const server = createServer((s) => {
      s.on('error', () => {});
      s.end('220 banner\r\n');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    return { server, port: (server.address() as { port: number }).port };
  }

  function connected(port: number, readBy: 'js' | 'relay'): Promise<Socket> {
    return new Promise((resolve, reject) =>
      connectTask(`127.0.0.1:${port}`, 5000, readBy, (err, socket) => (err ? reject(err) : resolve(socket!))),
    );
  }

  it("leaves a socket for the relay unread: a task's first bytes stay in the kernel, JS keeps none", async () => {
    const task = await bannerTask();
    try {
      const socket = await connected(task.port, 'relay');
      // Long enough for the banner to arrive and for Node to read it, were it reading.
      await new Promise((r) => setTimeout(r, 100));
      expect(socket.bytesRead).toBe(0);
      expect(socket.readableLength).toBe(0);
      expect(hasUnforwardedReads(socket)).toBe(false);
      // Resumed (as pump() does when the relay cannot take it), the banner is all there.
      expect(`${await collect(socket.resume())}`).toBe('220 banner\r\n');
    } finally {
      task.server.close();
    }
  });

  it('reads a socket pump() will move into its own buffer, keeping what came before pump() started', async () => {
    const task = await bannerTask();
    try {
      const socket = await connected(task.port, 'js');
      await new Promise((r) => setTimeout(r, 100));
      expect(socket.bytesRead).toBe('220 banner\r\n'.length);
      expect(hasUnforwardedReads(socket)).toBe(true);
      socket.destroy();
    } finally {
      task.server.close();
    }
  });

  it('calls back with the error when nothing listens, and with a parse error for a bad address', async () => {
    const closed = await bannerTask();
    await new Promise<void>((r) => closed.server.close(() => r()));
    await expect(connected(closed.port, 'relay')).rejects.toThrow(/ECONNREFUSED/);
    await expect(
      new Promise((resolve, reject) =>
        connectTask('not an address', 5000, 'relay', (err, socket) => (err ? reject(err) : resolve(socket))),
      ),
    ).rejects.toThrow();
  });
});
