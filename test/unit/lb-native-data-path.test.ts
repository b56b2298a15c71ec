// The native relay's data path between nodes (relay.c, through native-relay.ts) on real loopback TCP: a dialer
// stand-in connects to a data path port, the relay sets up TLS 1.3 with a ticket's key and sends a remote header;
// the server stand-in's relay accepts it and reports the header; JS joins each side to its socket (the client, the
// task) and the bytes move between them through two relays and one TLS connection, as between two daemons.
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket, connect as tlsConnect } from 'node:tls';
import { describe, expect, it } from 'vitest';
import type { NativeRelay, ParkedConnection, RelayEnd, SetupOutcome } from '../../daemon/lb/native-relay.ts';
import { LINGER_MS } from '../../daemon/lb/pump.ts';
import { encodeRemoteHeader } from '../../daemon/lb/remote.ts';
import { echoInTurns, loopbackSockets, receiveAll } from '../helpers/loopback-sockets.ts';
import { endOneWay, relayUnderTest, sendBothWays, relayTicket as ticket } from '../helpers/native-relay.ts';

const RELAY = relayUnderTest();

const { servers, sockets, listen, connectTo } = loopbackSockets();

const HEADER = encodeRemoteHeader({ taskId: 'task-1' });

/** A data path server stand-in: each accepted connection's set-up outcome goes to `onSetup`. */
function dataPathServer(
  relay: NativeRelay,
  onSetup: (outcome: SetupOutcome, parked: ParkedConnection | undefined, socket: Socket) => void,
): Promise<number> {
  return listen((socket) => relay.accept(socket, (outcome, parked) => onSetup(outcome, parked, socket)), true);
}

/** Dials a data path port with a ticket and the header; resolves with the set-up's outcome. */
async function dial(
  relay: NativeRelay,
  port: number,
  key: { identity: string; key: Uint8Array },
  header = HEADER,
): Promise<{ outcome: SetupOutcome; parked: ParkedConnection | undefined }> {
  const socket = await connectTo(port);
  return new Promise((resolve) => relay.dial(socket, key, header, (outcome, parked) => resolve({ outcome, parked })));
}

interface Hop {
  client: Socket;
  task: Socket;
  /** What the server's relay reported. */
  served: SetupOutcome;
  clientEnd: Promise<RelayEnd>;
  taskEnd: Promise<RelayEnd>;
}

/**
 * client -> [ingress: accepted paused, dial, join] -> data path -> [server: accept, connect to the task, join with
 * status 0] -> task. Resolves once both relays hold their sides.
 */
async function hop(relay: NativeRelay): Promise<Hop> {
  const { promise: taskAccepted, resolve: taskIs } = Promise.withResolvers<Socket>();
  const taskPort = await listen(taskIs);
  const { promise: served, resolve: serve } = Promise.withResolvers<{
    outcome: SetupOutcome;
    taskEnd: Promise<RelayEnd>;
  }>();
  const dataPort = await dataPathServer(relay, (outcome, parked) => {
    const toTask = connect({ host: '127.0.0.1', port: taskPort, allowHalfOpen: true }, () => {
      const { promise: taskEnd, resolve: end } = Promise.withResolvers<RelayEnd>();
      if (parked?.join(toTask, 0, LINGER_MS, end) === undefined) throw new Error('join refused a fresh socket');
      serve({ outcome, taskEnd });
    });
    sockets.push(toTask);
  });
  const key = ticket(relay);
  // In an object: resolving with a promise would wait for that promise.
  const { promise: joined, resolve: joinedWith } = Promise.withResolvers<{ clientEnd: Promise<RelayEnd> }>();
  const ingressPort = await listen(async (accepted) => {
    const { outcome, parked } = await dial(relay, dataPort, key);
    expect(outcome).toMatchObject({ kind: 'ready', status: 0 });
    const { promise: clientEnd, resolve: end } = Promise.withResolvers<RelayEnd>();
    if (parked?.join(accepted, undefined, LINGER_MS, end) === undefined) throw new Error('join refused the client');
    joinedWith({ clientEnd });
  }, true);
  const client = await connectTo(ingressPort);
  const { clientEnd } = await joined;
  const { outcome, taskEnd } = await served;
  return { client, task: await taskAccepted, served: outcome, clientEnd, taskEnd };
}

describe.skipIf(typeof RELAY === 'string')('native data path (relay.c, TLS 1.3 with a ticket key)', () => {
  const relay = RELAY as NativeRelay;

  it('carries 8 MiB each way intact between client and task, and the server sees the header and key', async () => {
    const { client, task, served, clientEnd, taskEnd } = await hop(relay);
    expect(served).toMatchObject({ kind: 'ready', status: 0 });
    if (served.kind !== 'ready') throw new Error('not ready');
    expect(served.header).toEqual(HEADER.subarray(2));
    const { up, down, atTask, atClient } = await sendBothWays(client, task);
    expect(atTask.equals(up)).toBe(true);
    expect(atClient.equals(down)).toBe(true);
    const [ingress, server] = await Promise.all([clientEnd, taskEnd]);
    expect(ingress).toEqual({ aToB: up.length, bToA: down.length, error: undefined });
    // The server's side a is the task: it also sent the status byte towards the dialer.
    expect(server).toEqual({ aToB: down.length + 1, bToA: up.length, error: undefined });
  });

  it('passes a half-close through: the client ends, then still gets the answer', async () => {
    const { client, task } = await hop(relay);
    const request = receiveAll(task);
    client.end('question');
    expect((await request).toString()).toBe('question');
    const answer = receiveAll(client);
    task.end('answer');
    expect((await answer).toString()).toBe('answer');
  });

  it('carries 8 MiB to a task that reads in fits and starts, intact (reads resume after the task catches up)', async () => {
    const { client, task, clientEnd } = await hop(relay);
    const up = randomBytes(8 * 1024 * 1024);
    const chunks: Buffer[] = [];
    let sinceRest = 0;
    task.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      sinceRest += chunk.length;
      // Every 256 KiB a rest of 10 ms: the relays' buffers and both sockets fill, and the TLS session holds whole
      // records it read ahead while its destination was full.
      if (sinceRest < 256 * 1024) return;
      sinceRest = 0;
      task.pause();
      setTimeout(() => task.resume(), 10);
    });
    const atTask = new Promise<Buffer>((resolve) => task.once('end', () => resolve(Buffer.concat(chunks))));
    client.end(up);
    expect((await atTask).equals(up)).toBe(true);
    task.end();
    expect(await clientEnd).toEqual({ aToB: up.length, bToA: 0, error: undefined });
  });

  it('answers 1,000 requests in turn on one hop, each echo whole (no read skipped after a short one)', async () => {
    const { client, task, clientEnd } = await hop(relay);
    const echoed = await echoInTurns(client, task, 1000);
    client.end();
    task.end();
    expect(await clientEnd).toEqual({ aToB: echoed, bToA: echoed, error: undefined });
  });

  it('delivers what the task sends first, right behind the status byte', async () => {
    const { client, task } = await hop(relay);
    const got = new Promise<string>((resolve) => client.once('data', (chunk: Buffer) => resolve(chunk.toString())));
    task.write('220 banner\r\n');
    expect(await got).toBe('220 banner\r\n');
  });

  it('tells the dialer a refusal: the server drops with a status byte', async () => {
    const port = await dataPathServer(relay, (_outcome, parked) => parked?.drop(2));
    const { outcome } = await dial(relay, port, ticket(relay));
    expect(outcome).toEqual({ kind: 'ready', status: 2, header: undefined, identity: expect.any(String) });
  });

  it('fails the handshake on both sides for a key the server does not have, or one that expired', async () => {
    const outcomes: SetupOutcome[] = [];
    const port = await dataPathServer(relay, (outcome) => outcomes.push(outcome));
    const unknown = { identity: randomBytes(16).toString('hex'), key: randomBytes(32) };
    expect((await dial(relay, port, unknown)).outcome.kind).toBe('failed');
    const wrongKey = { ...ticket(relay), key: randomBytes(32) };
    expect((await dial(relay, port, wrongKey)).outcome.kind).toBe('failed');
    const expired = ticket(relay, 1);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect((await dial(relay, port, expired)).outcome.kind).toBe('failed');
    await expect.poll(() => outcomes.length).toBe(3);
    expect(outcomes.map((o) => o.kind)).toEqual(['failed', 'failed', 'failed']);
  });

  it('accepts one key for many handshakes until it expires', async () => {
    const port = await dataPathServer(relay, (_outcome, parked) => parked?.drop(0));
    const key = ticket(relay);
    for (let i = 0; i < 3; i++)
      expect((await dial(relay, port, key)).outcome).toMatchObject({ kind: 'ready', status: 0 });
  });

  it('leaves a legacy tunnel (a TLS ClientHello first) to JS, with every byte still on its socket', async () => {
    const tlsServer = createTlsServer({
      minVersion: 'TLSv1.3',
      ciphers: 'TLS_AES_128_GCM_SHA256',
      pskCallback: () => Buffer.alloc(32, 7),
    });
    tlsServer.on('secureConnection', (socket: TLSSocket) => socket.end('legacy ok'));
    const outcomes: SetupOutcome[] = [];
    const port = await dataPathServer(relay, (outcome, _parked, socket) => {
      outcomes.push(outcome);
      if (outcome.kind === 'legacy') tlsServer.emit('connection', socket);
    });
    const legacy = tlsConnect({
      host: '127.0.0.1',
      port,
      minVersion: 'TLSv1.3',
      ciphers: 'TLS_AES_128_GCM_SHA256',
      pskCallback: () => ({ psk: Buffer.alloc(32, 7), identity: 'legacy' }),
      checkServerIdentity: () => undefined,
    });
    sockets.push(legacy);
    expect((await receiveAll(legacy)).toString()).toBe('legacy ok');
    expect(outcomes).toEqual([{ kind: 'legacy' }]);
  });

  it('refuses a connection that starts with anything else, and one that says nothing until cut', async () => {
    const outcomes: SetupOutcome[] = [];
    const setups: { cut(): void }[] = [];
    const port = await listen((socket) => setups.push(relay.accept(socket, (outcome) => outcomes.push(outcome))), true);
    const garbage = await connectTo(port);
    garbage.write('GET / HTTP/1.1\r\n\r\n');
    await expect.poll(() => outcomes.length).toBe(1);
    expect(outcomes[0]).toEqual({ kind: 'failed', error: 'EPROTO' });
    const silent = await connectTo(port);
    await expect.poll(() => setups.length).toBe(2);
    setups[1]!.cut();
    await expect.poll(() => outcomes.length).toBe(2);
    expect(outcomes[1]!.kind).toBe('failed');
    silent.destroy();
  });

  it('leaves no descriptor open after 100 hops that end every way', async () => {
    const before = readdirSync('/proc/self/fd').length;
    for (let i = 0; i < 100; i++) {
      const { client, task, clientEnd, taskEnd } = await hop(relay);
      endOneWay(i, client, task);
      await Promise.all([clientEnd, taskEnd]);
      client.destroy();
      task.destroy();
      for (const server of servers.splice(0)) server.close();
    }
    await expect.poll(() => readdirSync('/proc/self/fd').length, { timeout: 5000 }).toBeLessThanOrEqual(before + 2);
  });
});
