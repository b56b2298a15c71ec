// The native relay's mux (native/mux.c, through native-relay.ts) on real loopback TCP: one TLS connection to a data
// path port, set up with a ticket's key, carries many forwarded connections as streams. A dialer stand-in opens a
// stream per client and joins it to the client's socket; the server's relay reports each stream with its remote
// header (accept's onStream) and JS joins it to a task it connected to, as the daemon does (remote.ts's serveNativeHop).
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { describe, expect, it } from 'vitest';
import type {
  Mux,
  NativeRelay,
  ParkedConnection,
  RelayEnd,
  RelayedConnection,
  SetupOutcome,
} from '../../daemon/lb/native-relay.ts';
import { LINGER_MS } from '../../daemon/lb/pump.ts';
import { encodeRemoteHeader } from '../../daemon/lb/remote.ts';
import { echoInTurns, loopbackSockets, receiveAll } from '../helpers/loopback-sockets.ts';
import { endOneWay, relayUnderTest, sendBothWays, relayTicket as ticket } from '../helpers/native-relay.ts';

const RELAY = relayUnderTest();

const { servers, sockets, listen, connectTo } = loopbackSockets();

const HEADER = encodeRemoteHeader({ taskId: 'task-1' });
const MAGIC_MUX = Buffer.from('swarmdM1');

/** How the server side treats each stream a peer opens: by default, connect to the task and join with status 0. */
type ServeStream = (parked: ParkedConnection, header: Buffer) => void;

interface Served {
  header: Buffer;
  task: Socket;
  taskEnd: Promise<RelayEnd>;
  relayed: RelayedConnection;
}

/** A data path port whose muxes' streams go to `serve`; the server's set-up outcomes are collected. */
async function muxServer(relay: NativeRelay, serve: ServeStream): Promise<{ port: number; outcomes: SetupOutcome[] }> {
  const outcomes: SetupOutcome[] = [];
  const port = await listen(
    (socket) =>
      relay.accept(
        socket,
        (outcome) => outcomes.push(outcome),
        (parked, header) => serve(parked, header),
      ),
    true,
  );
  return { port, outcomes };
}

/** Serves each stream by connecting to a task on `taskPort`; what each got goes to `served`. */
function toTask(taskPort: number, tasks: AsyncIterator<Socket>, served: (s: Served) => void): ServeStream {
  return (parked, header) => {
    const socket = connect({ host: '127.0.0.1', port: taskPort, allowHalfOpen: true }, async () => {
      const { promise: taskEnd, resolve: end } = Promise.withResolvers<RelayEnd>();
      const relayed = parked.join(socket, 0, LINGER_MS, end);
      if (relayed === undefined) throw new Error('join refused a fresh socket');
      const task = (await tasks.next()).value as Socket;
      served({ header, task, taskEnd, relayed });
    });
    sockets.push(socket);
  };
}

/** Sockets a listener accepts, in order. */
function accepted(): { onConnection: (socket: Socket) => void; next: AsyncIterator<Socket> } {
  const waiting: Socket[] = [];
  const takers: ((socket: Socket) => void)[] = [];
  return {
    onConnection(socket) {
      const taker = takers.shift();
      if (taker) taker(socket);
      else waiting.push(socket);
    },
    next: {
      next: () =>
        new Promise((resolve) => {
          const socket = waiting.shift();
          if (socket) resolve({ value: socket, done: false });
          else takers.push((s) => resolve({ value: s, done: false }));
        }),
    },
  };
}

function dialMux(relay: NativeRelay, port: number, key: { identity: string; key: Uint8Array }, thread = 0) {
  return connectTo(port).then(
    (socket) =>
      new Promise<{ mux: Mux | undefined; error?: string; ended: Promise<string | undefined> }>((resolve) => {
        const { promise: ended, resolve: end } = Promise.withResolvers<string | undefined>();
        relay.dialMux(
          socket,
          key,
          thread,
          (outcome) =>
            resolve(
              outcome.kind === 'up' ? { mux: outcome.mux, ended } : { mux: undefined, error: outcome.error, ended },
            ),
          end,
        );
      }),
  );
}

/** Opens a stream; resolves with the set-up's outcome. */
function open(mux: Mux, header = HEADER): Promise<{ outcome: SetupOutcome; parked: ParkedConnection | undefined }> {
  return new Promise((resolve) => mux.open(header, (outcome, parked) => resolve({ outcome, parked })));
}

interface Stream {
  client: Socket;
  task: Socket;
  served: Served;
  clientEnd: Promise<RelayEnd>;
  /** The ingress side's relayed connection. */
  relayed: RelayedConnection;
}

/** A mux to a server that connects every stream to a task, and a way to make client connections over it. */
async function muxToTasks(relay: NativeRelay) {
  const tasks = accepted();
  const taskPort = await listen(tasks.onConnection);
  const served: Served[] = [];
  const { port, outcomes } = await muxServer(
    relay,
    toTask(taskPort, tasks.next, (s) => served.push(s)),
  );
  const { mux, ended } = await dialMux(relay, port, ticket(relay));
  if (mux === undefined) throw new Error('the mux did not come up');
  /** client -> [ingress: accepted paused, open a stream, join] -> mux -> [server: connect the task, join] -> task */
  const stream = async (): Promise<Stream> => {
    const { promise: joined, resolve: joinedWith } = Promise.withResolvers<{
      clientEnd: Promise<RelayEnd>;
      relayed: RelayedConnection;
    }>();
    const ingressPort = await listen(async (client) => {
      const { outcome, parked } = await open(mux);
      expect(outcome).toMatchObject({ kind: 'ready', status: 0 });
      const { promise: clientEnd, resolve: end } = Promise.withResolvers<RelayEnd>();
      const relayed = parked?.join(client, undefined, LINGER_MS, end);
      if (relayed === undefined) throw new Error('join refused the client');
      joinedWith({ clientEnd, relayed });
    }, true);
    const servedBefore = served.length;
    const client = await connectTo(ingressPort);
    const { clientEnd, relayed } = await joined;
    await expect.poll(() => served.length).toBeGreaterThan(servedBefore);
    const mine = served[servedBefore]!;
    return { client, task: mine.task, served: mine, clientEnd, relayed };
  };
  return { mux, ended, stream, outcomes };
}

describe.skipIf(typeof RELAY === 'string')('native mux (mux.c: many streams over one TLS connection)', () => {
  const relay = RELAY as NativeRelay;

  it('carries 8 MiB each way intact on a stream, and the server gets the header', async () => {
    const { stream, outcomes } = await muxToTasks(relay);
    const { client, task, served, clientEnd } = await stream();
    expect(outcomes.map((outcome) => outcome.kind)).toEqual(['mux']);
    expect(served.header).toEqual(HEADER.subarray(2));
    const { up, down, atTask, atClient } = await sendBothWays(client, task);
    expect(atTask.equals(up)).toBe(true);
    expect(atClient.equals(down)).toBe(true);
    expect(await clientEnd).toEqual({ aToB: up.length, bToA: down.length, error: undefined });
    // The status goes in a frame of its own: the task's side counts only the task's bytes.
    expect(await served.taskEnd).toEqual({ aToB: down.length, bToA: up.length, error: undefined });
  });

  it('answers requests in turn on 20 streams at once, each echo whole', async () => {
    const { stream } = await muxToTasks(relay);
    const streams: Stream[] = [];
    for (let i = 0; i < 20; i++) streams.push(await stream());
    const echoed = await Promise.all(streams.map(({ client, task }) => echoInTurns(client, task, 100)));
    for (const { client, task } of streams) {
      client.end();
      task.end();
    }
    const ends = await Promise.all(streams.map((s) => s.clientEnd));
    expect(ends).toEqual(echoed.map((bytes) => ({ aToB: bytes, bToA: bytes, error: undefined })));
  });

  it('keeps other streams moving while one task reads nothing, then delivers that stream whole', async () => {
    const { stream } = await muxToTasks(relay);
    const stalled = await stream();
    const moving = await stream();
    stalled.task.pause();
    const big = randomBytes(4 * 1024 * 1024);
    const written = new Promise<void>((resolve) => stalled.client.end(big, resolve));
    // Far more than the stream's window (256 KiB) and the sockets' buffers: its sender must stop, not the mux.
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(await echoInTurns(moving.client, moving.task, 200)).toBeGreaterThan(0);
    const atTask = receiveAll(stalled.task);
    stalled.task.resume();
    expect((await atTask).equals(big)).toBe(true);
    await written;
  });

  it('passes a half-close through, and what the task sends first', async () => {
    const { stream } = await muxToTasks(relay);
    const first = await stream();
    const banner = new Promise<string>((resolve) =>
      first.client.once('data', (chunk: Buffer) => resolve(chunk.toString())),
    );
    first.task.write('220 banner\r\n');
    expect(await banner).toBe('220 banner\r\n');
    const second = await stream();
    const request = receiveAll(second.task);
    second.client.end('question');
    expect((await request).toString()).toBe('question');
    const answer = receiveAll(second.client);
    second.task.end('answer');
    expect((await answer).toString()).toBe('answer');
  });

  it('ends a stream cut on either side at once, on both nodes, and the mux goes on', async () => {
    const { stream } = await muxToTasks(relay);
    for (const side of ['ingress', 'server'] as const) {
      const { client, task, served, clientEnd, relayed } = await stream();
      // Half-open allowed: each side learns of the end by its EOF (or a reset).
      const gone = (socket: Socket) =>
        new Promise((resolve) => {
          socket.once('end', resolve);
          socket.once('error', resolve);
        });
      const taskClosed = gone(task);
      const clientClosed = gone(client);
      client.resume();
      task.resume();
      // Neither socket ends: only the cut can end the stream (a drain's cut, a closing ingress).
      if (side === 'ingress') relayed.cut();
      else served.relayed.cut();
      await Promise.all([clientEnd, served.taskEnd, taskClosed, clientClosed]);
    }
    const after = await stream();
    expect(await echoInTurns(after.client, after.task, 10)).toBeGreaterThan(0);
  });

  it('tells the dialer a refusal (the server drops with a status), and the stream after it works', async () => {
    let refuse = true;
    const tasks = accepted();
    const taskPort = await listen(tasks.onConnection);
    const served: Served[] = [];
    const serveTask = toTask(taskPort, tasks.next, (s) => served.push(s));
    const { port } = await muxServer(relay, (parked, header) => (refuse ? parked.drop(2) : serveTask(parked, header)));
    const { mux } = await dialMux(relay, port, ticket(relay));
    const refused = await open(mux!);
    expect(refused.outcome).toMatchObject({ kind: 'ready', status: 2 });
    refused.parked?.drop();
    refuse = false;
    const ok = await open(mux!);
    expect(ok.outcome).toMatchObject({ kind: 'ready', status: 0 });
    ok.parked?.drop();
  });

  it('fails a stream cut while it waits for its status, and the server side learns it is gone', async () => {
    const held: ParkedConnection[] = [];
    const { port } = await muxServer(relay, (parked) => held.push(parked));
    const { mux } = await dialMux(relay, port, ticket(relay));
    const { promise: outcome, resolve } = Promise.withResolvers<SetupOutcome>();
    const setup = mux!.open(HEADER, (o) => resolve(o));
    await expect.poll(() => held.length).toBe(1);
    setup.cut();
    expect(await outcome).toEqual({ kind: 'failed', error: 'ECANCELED' });
    // The server's stream was reset: joining it now ends it at once.
    const task = await connectTo(await listen(() => {}));
    const { promise: ended, resolve: end } = Promise.withResolvers<RelayEnd>();
    held[0]!.join(task, 0, LINGER_MS, end);
    expect((await ended).error).toBe('ECONNRESET');
  });

  it('ends every stream when the mux ends: open ones with an error, one waiting for its status as failed', async () => {
    const { mux, ended, stream } = await muxToTasks(relay);
    const open1 = await stream();
    mux.cut();
    expect(await ended).toBeDefined();
    expect((await open1.clientEnd).error).toBeDefined();
    expect(mux.ended).toBe(true);
    expect(() => mux.open(HEADER, () => {})).toThrow('not up');
  });

  it('refuses a key the server does not have', async () => {
    const { port, outcomes } = await muxServer(relay, (parked) => parked.drop(0));
    const unknown = { identity: randomBytes(16).toString('hex'), key: randomBytes(32) };
    const { mux, error } = await dialMux(relay, port, unknown);
    expect(mux).toBeUndefined();
    expect(error).toBeDefined();
    await expect.poll(() => outcomes.length).toBe(1);
    expect(outcomes[0]!.kind).toBe('failed');
  });

  it('ends a mux whose peer breaks the protocol, fails its streams, and goes on serving other muxes', async () => {
    const held: ParkedConnection[] = [];
    let refuseWith: number | undefined;
    const { port } = await muxServer(relay, (parked) => {
      if (refuseWith === undefined) held.push(parked);
      else parked.drop(refuseWith);
    });
    const key = ticket(relay);
    const bad: [string, Buffer][] = [
      ['an unknown frame type', frame(1, 9, Buffer.alloc(0))],
      ['a nonzero reserved byte', Buffer.from([0, 0, 0, 1, 0, 1, 0, 0])],
      ['stream id 0', frame(0, 0, Buffer.from('x'))],
      ['a STATUS to the server', frame(1, 2, Buffer.from([0]))],
      ['OPEN ids going back', Buffer.concat([frame(5, 1, HEADER), frame(3, 1, HEADER)])],
      ['an OPEN whose header length is wrong', frame(1, 1, Buffer.from([0, 9, 1, 2]))],
      ['a CREDIT of 3 bytes', frame(1, 5, Buffer.alloc(3))],
      ['DATA for a stream not answered yet', Buffer.concat([frame(1, 1, HEADER), frame(1, 0, Buffer.from('early'))])],
    ];
    for (const [what, bytes] of bad) {
      const peer = await rawMuxPeer(port, key);
      peer.write(bytes);
      const closed = receiveAll(peer).then(
        () => 'closed',
        () => 'closed',
      );
      await expect(closed, what).resolves.toBe('closed');
    }
    // The streams those muxes opened (OPEN ids going back, DATA too early) failed with them.
    expect(held).toHaveLength(2);
    for (const parked of held) {
      const task = await connectTo(await listen(() => {}));
      const { promise: ended, resolve: end } = Promise.withResolvers<RelayEnd>();
      parked.join(task, 0, LINGER_MS, end);
      expect((await ended).error).toBe('ECONNRESET');
    }
    // The relay is still there: a proper mux to the same port works.
    refuseWith = 4;
    const { mux } = await dialMux(relay, port, key);
    expect((await open(mux!)).outcome).toMatchObject({ kind: 'ready', status: 4 });
  });

  it("ends a mux whose peer sends past a stream's window while its task reads nothing", async () => {
    const tasks = accepted();
    const taskPort = await listen(tasks.onConnection);
    const served: Served[] = [];
    const { port } = await muxServer(
      relay,
      toTask(taskPort, tasks.next, (s) => served.push(s)),
    );
    const peer = await rawMuxPeer(port, ticket(relay));
    const answered = new Promise((resolve) => peer.once('data', resolve));
    peer.write(frame(1, 1, HEADER));
    await answered;
    await expect.poll(() => served.length).toBe(1);
    served[0]!.task.pause();
    const closed = receiveAll(peer).then(
      () => 'closed',
      () => 'closed',
    );
    // 32 MiB, credit or not: once the task's socket is full, the stream would hold it all.
    const chunk = frame(1, 0, Buffer.alloc(16384));
    for (let i = 0; i < 2048 && !peer.destroyed; i++) {
      if (!peer.write(chunk)) await Promise.race([new Promise((resolve) => peer.once('drain', resolve)), closed]);
    }
    expect(await closed).toBe('closed');
    expect((await served[0]!.taskEnd).error).toBe('ECONNRESET');
  });

  it("gives each accepted mux's streams to its own onStream, and refuses them where there is none", async () => {
    const first = await muxServer(relay, (parked) => parked.drop(2));
    const second = await muxServer(relay, (parked) => parked.drop(3));
    const key = ticket(relay);
    const toFirst = await dialMux(relay, first.port, key);
    const toSecond = await dialMux(relay, second.port, key);
    expect((await open(toFirst.mux!)).outcome).toMatchObject({ kind: 'ready', status: 2 });
    expect((await open(toSecond.mux!)).outcome).toMatchObject({ kind: 'ready', status: 3 });
    const bare = await listen((socket) => relay.accept(socket, () => {}), true);
    const toBare = await dialMux(relay, bare, key);
    // remote.ts's badHeader: that node does not serve streams.
    expect((await open(toBare.mux!)).outcome).toMatchObject({ kind: 'ready', status: 1 });
  });

  it('leaves no descriptor open after 60 streams that end every way and 3 muxes', async () => {
    const before = readdirSync('/proc/self/fd').length;
    for (let round = 0; round < 3; round++) {
      const { mux, ended, stream } = await muxToTasks(relay);
      for (let i = 0; i < 20; i++) {
        const { client, task, clientEnd, served } = await stream();
        endOneWay(i, client, task);
        await Promise.all([clientEnd, served.taskEnd]);
        client.destroy();
        task.destroy();
      }
      mux.cut();
      await ended;
      for (const socket of sockets.splice(0)) socket.destroy();
      for (const server of servers.splice(0)) server.close();
    }
    await expect.poll(() => readdirSync('/proc/self/fd').length, { timeout: 5000 }).toBeLessThanOrEqual(before + 2);
  });
});

/** A mux frame: id, type, reserved 0, length, payload (mux.c). */
function frame(id: number, type: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt32BE(id, 0);
  header[4] = type;
  header.writeUInt16BE(payload.length, 6);
  return Buffer.concat([header, payload]);
}

/** A mux peer written in JS: MAGIC_MUX, then a TLS 1.3 handshake with the ticket, then whatever the test sends. */
async function rawMuxPeer(port: number, key: { identity: string; key: Uint8Array }) {
  const socket = await connectTo(port);
  socket.write(MAGIC_MUX);
  const tls = tlsConnect({
    socket,
    minVersion: 'TLSv1.3',
    ciphers: 'TLS_AES_128_GCM_SHA256',
    pskCallback: () => ({ psk: Buffer.from(key.key), identity: key.identity }),
    checkServerIdentity: () => undefined,
  });
  sockets.push(tls as unknown as Socket);
  tls.on('error', () => {});
  await new Promise<void>((resolve) => tls.once('secureConnect', () => resolve()));
  return tls;
}
