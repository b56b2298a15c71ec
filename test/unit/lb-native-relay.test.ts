// The native relay (daemon/lb/native/relay.c through native-relay.ts) on real loopback TCP connections: a client
// connects to a listener standing in for the ingress, which connects to a server standing in for the task and hands
// both sockets to the relay. Built by cli/launch.mjs (npm test) or `npm run build:native`; CI fails without it,
// elsewhere the suite is skipped with the reason.
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import type { NativeRelay, RelayEnd, RelayedConnection } from '../../daemon/lb/native-relay.ts';
import { LINGER_MS } from '../../daemon/lb/pump.ts';
import { echoInTurns, loopbackSockets, receiveAll } from '../helpers/loopback-sockets.ts';
import { relayUnderTest, sendBothWays } from '../helpers/native-relay.ts';

const RELAY = relayUnderTest();

const { servers, sockets, listen, connectTo } = loopbackSockets();

interface Relayed {
  /** The client's socket (before the relay). */
  client: Socket;
  /** The task's side of the connection (after the relay). */
  task: Socket;
  relayed: RelayedConnection;
  ended: Promise<RelayEnd>;
}

/** client -> [ingress stand-in: handOver] -> task server; resolves once the relay holds the connection. */
async function relayedConnection(relay: NativeRelay, lingerMs = LINGER_MS): Promise<Relayed> {
  const { promise: taskAccepted, resolve: taskIs } = Promise.withResolvers<Socket>();
  const taskPort = await listen(taskIs);
  const { promise: handedOver, resolve: handed } = Promise.withResolvers<Omit<Relayed, 'client' | 'task'>>();
  const ingressPort = await listen((accepted) => {
    const toTask = connect({ host: '127.0.0.1', port: taskPort, allowHalfOpen: true }, () => {
      const { promise: ended, resolve: end } = Promise.withResolvers<RelayEnd>();
      const relayed = relay.handOver(accepted, toTask, lingerMs, end);
      if (relayed === undefined) throw new Error('handOver refused two fresh sockets');
      handed({ relayed, ended });
    });
    sockets.push(toTask);
  }, true);
  const client = await connectTo(ingressPort);
  client.on('error', () => {});
  const { relayed, ended } = await handedOver;
  return { client, task: await taskAccepted, relayed, ended };
}

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe.skipIf(typeof RELAY === 'string')('native relay', () => {
  const relay = RELAY as NativeRelay;

  it('runs at least one relay thread', () => {
    expect(relay.threads).toBeGreaterThanOrEqual(1);
  });

  it('moves 8 MiB each way at once, intact, counts them, and ends cleanly when both sides have ended', async () => {
    const { client, task, relayed, ended } = await relayedConnection(relay);
    const { up, down, atTask, atClient } = await sendBothWays(client, task);
    expect(sha(atTask)).toBe(sha(up));
    expect(sha(atClient)).toBe(sha(down));
    const end = await ended;
    expect(end).toEqual({ aToB: up.length, bToA: down.length, error: undefined });
    expect(relayed.bytes()).toEqual({ aToB: up.length, bToA: down.length });
  });

  it('answers 1,000 requests in turn on one connection, each echo whole (no read skipped after a short one)', async () => {
    const { client, task, ended } = await relayedConnection(relay);
    const echoed = await echoInTurns(client, task, 1000);
    client.end();
    task.end();
    expect(await ended).toEqual({ aToB: echoed, bToA: echoed, error: undefined });
  });

  it('passes a half-close on: the task reads to the end, then still answers', async () => {
    const { client, task, ended } = await relayedConnection(relay);
    const request = new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      task.on('data', (chunk: Buffer) => chunks.push(chunk));
      // Answers only once the client's side has ended, as a server of a request-then-shutdown protocol does.
      task.once('end', () => {
        const whole = Buffer.concat(chunks);
        task.end(`got ${whole.length} bytes`);
        resolve(whole);
      });
    });
    const answer = receiveAll(client);
    client.end('the whole request');
    expect((await request).toString()).toBe('the whole request');
    expect((await answer).toString()).toBe('got 17 bytes');
    expect((await ended).error).toBeUndefined();
  });

  it('cut() ends both sides and reports', async () => {
    const { client, task, relayed, ended } = await relayedConnection(relay);
    const clientClosed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    const taskClosed = new Promise<void>((resolve) => task.once('close', () => resolve()));
    client.write('hello');
    await new Promise<void>((resolve) => task.once('data', () => resolve()));
    relayed.cut();
    await ended;
    client.destroySoon();
    task.destroySoon();
    await Promise.all([clientClosed, taskClosed]);
    expect(relayed.bytes().aToB).toBe(5);
  });

  it('reports a reset by the task as an error, and ends the client connection', async () => {
    const { client, task, ended } = await relayedConnection(relay);
    const clientEnded = new Promise<void>((resolve) => client.once('end', () => resolve()));
    client.resume();
    task.resetAndDestroy();
    const end = await ended;
    expect(end.error).toMatch(/ECONNRESET|EPIPE/);
    await clientEnded;
  });

  it('cuts a connection whose client ended and stopped reading, once nothing moved for the linger time', async () => {
    const { client, task, ended } = await relayedConnection(relay, 300);
    client.pause();
    client.end();
    // More than the loopback buffers hold, so the relay is left holding some for a client that does not read.
    task.on('error', () => {});
    task.end(randomBytes(32 * 1024 * 1024));
    const started = Date.now();
    const end = await ended;
    expect(end.error).toBe('ETIMEDOUT');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it('does not cut a slow reader that keeps taking bytes after the other side ended', async () => {
    const { client, task, ended } = await relayedConnection(relay, 300);
    // More than the loopback buffers hold, read at 128 KiB per 50 ms: about 3 s, ten times the linger time. Too slow
    // for the kernel to wake the relay at each read (only once much of its send buffer is free).
    const payload = randomBytes(8 * 1024 * 1024);
    client.pause();
    client.end();
    task.end(payload);
    const received: Buffer[] = [];
    const clientEnded = new Promise<void>((resolve) => client.once('end', () => resolve()));
    const timer = setInterval(() => {
      const chunk = (client.read(128 * 1024) ?? client.read()) as Buffer | null;
      if (chunk !== null) received.push(chunk);
      if (client.readableEnded) clearInterval(timer);
    }, 50);
    const end = await ended;
    expect(end.error).toBeUndefined();
    expect(end.bToA).toBe(payload.length);
    client.on('data', (chunk: Buffer) => received.push(chunk));
    clearInterval(timer);
    client.resume();
    await clientEnded;
    expect(sha(Buffer.concat(received))).toBe(sha(payload));
  }, 30_000);

  it('keeps waiting on a half-open connection whose task is still working (no linger)', async () => {
    const { client, task, ended } = await relayedConnection(relay, 200);
    let over = false;
    void ended.then(() => {
      over = true;
    });
    client.end('request');
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(over).toBe(false);
    const answer = receiveAll(client);
    task.end('late answer');
    expect((await answer).toString()).toBe('late answer');
    expect((await ended).error).toBeUndefined();
  });

  it('relays 200 connections at once, each intact (spread over the relay threads)', async () => {
    const echoPort = await listen((socket) => socket.pipe(socket));
    const ingressPort = await listen((accepted) => {
      const toTask = connect({ host: '127.0.0.1', port: echoPort, allowHalfOpen: true }, () => {
        relay.handOver(accepted, toTask, LINGER_MS, () => {});
      });
      sockets.push(toTask);
    }, true);
    const results = await Promise.all(
      Array.from({ length: 200 }, async () => {
        const payload = randomBytes(64 * 1024);
        const client = await connectTo(ingressPort);
        const echoed = receiveAll(client);
        client.end(payload);
        return sha(await echoed) === sha(payload);
      }),
    );
    expect(results.filter((ok) => !ok)).toEqual([]);
  });

  it('leaves no descriptor open after 300 connections that end every way: cleanly, cut, reset, half-closed', async () => {
    const openDescriptors = () => readdirSync('/proc/self/fd').length;
    const settle = () => new Promise((r) => setTimeout(r, 200));
    await settle();
    const before = openDescriptors();
    const endings = await Promise.all(
      Array.from({ length: 300 }, async (_, i) => {
        const { client, task, relayed, ended } = await relayedConnection(relay);
        client.resume();
        task.resume();
        switch (i % 4) {
          case 0:
            client.end('bye');
            task.end('bye');
            break;
          case 1:
            relayed.cut();
            break;
          case 2:
            task.resetAndDestroy();
            break;
          default:
            client.end('request');
            task.once('end', () => task.end('answer'));
        }
        const end = await ended;
        client.destroy();
        task.destroy();
        return end;
      }),
    );
    expect(endings).toHaveLength(300);
    for (const server of servers.splice(0)) server.close();
    for (const socket of sockets.splice(0)) socket.destroy();
    await settle();
    expect(openDescriptors()).toBe(before);
  });

  it('refuses a socket with writes still queued, and leaves both sockets to the caller', async () => {
    const { promise: acceptedOnce, resolve: acceptedIs } = Promise.withResolvers<Socket>();
    const ingressPort = await listen(acceptedIs, true);
    const stalled = await connectTo(ingressPort);
    const accepted = await acceptedOnce;
    stalled.pause();
    // The peer is not reading: most of this stays queued in JS.
    accepted.write(randomBytes(64 * 1024 * 1024));
    const other = await connectTo(ingressPort);
    expect(accepted.writableLength).toBeGreaterThan(0);
    expect(relay.handOver(accepted, other, LINGER_MS, () => {})).toBeUndefined();
    expect(accepted.destroyed).toBe(false);
    expect(other.destroyed).toBe(false);
  });

  it('cuts the connections of a thread that stops (an ingress thread closing)', async () => {
    const taskSockets: Socket[] = [];
    const taskPort = await listen((socket) => taskSockets.push(socket));
    const worker = new Worker(
      `
      const { parentPort, workerData } = require('node:worker_threads');
      const net = require('node:net');
      const { nativeRelay } = require(workerData.module);
      const relay = nativeRelay();
      const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (accepted) => {
        const toTask = net.connect({ host: '127.0.0.1', port: workerData.taskPort, allowHalfOpen: true }, () => {
          relay.handOver(accepted, toTask, 30000, () => {});
          parentPort.postMessage('handed');
        });
      });
      server.listen(0, '127.0.0.1', () => parentPort.postMessage(server.address().port));
      `,
      {
        eval: true,
        workerData: { module: new URL('../../daemon/lb/native-relay.ts', import.meta.url).pathname, taskPort },
      },
    );
    const messages: unknown[] = [];
    const next = () =>
      new Promise<unknown>((resolve) => {
        if (messages.length > 0) resolve(messages.shift());
        else worker.once('message', resolve);
      });
    const ingressPort = (await next()) as number;
    const client = await connectTo(ingressPort);
    expect(await next()).toBe('handed');
    client.write('ping');
    while (taskSockets.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    const task = taskSockets[0]!;
    expect((await new Promise<Buffer>((resolve) => task.once('data', resolve))).toString()).toBe('ping');
    const clientClosed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.on('end', () => client.end());
    task.on('end', () => task.end());
    await worker.terminate();
    await clientClosed;
  });
});
