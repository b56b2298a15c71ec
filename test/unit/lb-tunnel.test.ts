// The mesh hop's HTTP/2 tunnel (daemon/lb/tunnel.ts) over in-memory transports standing in for the libp2p stream
// (the real one is exercised by test/integration/lb.test.ts): many connections on one tunnel, half-close, a tunnel
// that dies and is reopened, and hostile input on the serving side.
import { constants, connect as http2Connect } from 'node:http2';
import { type Duplex, duplexPair } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { encodeRemoteHeader, REMOTE_STATUS, type ServeRemoteResult, serveRemote } from '../../daemon/lb/remote.ts';
import { TunnelDialer, TunnelServer } from '../../daemon/lb/tunnel.ts';
import { echoTaskForFile, exchange, expectEchoes } from '../helpers/echo-task.ts';

const echo = echoTaskForFile();

/** A tunnel server serving the echo task, and a dialer whose tunnels are in-memory pairs to it. */
function tunnelPair() {
  const results: ServeRemoteResult[] = [];
  const server = new TunnelServer((stream) => {
    void serveRemote(stream, (id) => (id === 'echo' ? echo.address() : undefined)).then((r) => results.push(r));
  });
  const transports: Duplex[] = [];
  const dialer = new TunnelDialer(async () => {
    const [near, far] = duplexPair();
    server.serve(far);
    transports.push(near);
    return near;
  });
  return { server, dialer, transports, results };
}

describe('load balancer tunnel', () => {
  it('carries many connections on one tunnel, each with its own bytes and half-close', async () => {
    const { server, dialer, transports } = tunnelPair();
    await expectEchoes(dialer, 40, 'connection');
    expect(transports).toHaveLength(1);
    dialer.close();
    server.close();
  });

  it('passes the task node status through: an unknown task is refused', async () => {
    const { server, dialer, results } = tunnelPair();
    const stream = await dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'gone' }), AbortSignal.timeout(5000));
    expect([...(await exchange(stream, ''))]).toEqual([REMOTE_STATUS.unknownTask]);
    expect(results).toEqual(['unknown-task']);
    dialer.close();
    server.close();
  });

  it('opens a new tunnel once the old one died, and the next connection works', async () => {
    const { server, dialer, transports } = tunnelPair();
    const first = await dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'echo' }), AbortSignal.timeout(5000));
    const cut = new Promise<string>((resolve) => {
      first.on('error', (err) => resolve(`error: ${err.message}`));
      first.on('close', () => resolve('closed'));
    });
    first.resume();
    transports[0]!.destroy(new Error('peer went away'));
    expect(await cut).toBeTruthy();
    // The session learns of the loss asynchronously; the dialer must not hand out the dead one.
    await new Promise((r) => setTimeout(r, 20));
    const second = await dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'echo' }), AbortSignal.timeout(5000));
    const reply = await exchange(second, 'again');
    expect(reply.subarray(1).toString()).toBe('again');
    expect(transports).toHaveLength(2);
    dialer.close();
    server.close();
  });

  it('drops a tunnel whose peer stops answering pings (a peer gone silent), and opens a new one', async () => {
    const server = new TunnelServer((stream) => void serveRemote(stream, () => echo.address()));
    // Between dialer and server, a link that can go silent: bytes are dropped both ways, nothing is closed.
    let silent = false;
    const link = (from: Duplex, to: Duplex) =>
      from.on('data', (chunk: Buffer) => {
        if (!silent) to.write(chunk);
      });
    const logs: string[] = [];
    let opened = 0;
    const dialer = new TunnelDialer(
      async () => {
        opened++;
        const [near, nearEnd] = duplexPair();
        const [farEnd, far] = duplexPair();
        link(nearEnd, farEnd);
        link(farEnd, nearEnd);
        server.serve(far);
        return near;
      },
      (message) => logs.push(message),
      { intervalMs: 100, timeoutMs: 200 },
    );
    const first = await dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'echo' }), AbortSignal.timeout(5000));
    expect((await exchange(first, 'before')).subarray(1).toString()).toBe('before');
    // Pings are answered while the link works: the tunnel stays.
    await new Promise((r) => setTimeout(r, 400));
    expect(dialer.openCount).toBe(1);
    silent = true;
    await expect.poll(() => dialer.openCount, { timeout: 3000 }).toBe(0);
    expect(logs.join('\n')).toMatch(/tunnel to peer-b did not answer a ping in 200 ms/);
    silent = false;
    const second = await dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'echo' }), AbortSignal.timeout(5000));
    expect((await exchange(second, 'after')).subarray(1).toString()).toBe('after');
    expect(opened).toBe(2);
    dialer.close();
    server.close();
  });

  it('an aborted connection is reset, and the task node lets go of it', async () => {
    const { server, dialer, results } = tunnelPair();
    const abort = new AbortController();
    const stream = await dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'echo' }), abort.signal);
    const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
    stream.on('error', () => {});
    stream.resume();
    await new Promise((r) => setTimeout(r, 50));
    abort.abort(new Error('client left'));
    await closed;
    await expect(dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'echo' }), abort.signal)).rejects.toThrow(
      'client left',
    );
    expect(results).toEqual(['served']);
    dialer.close();
    server.close();
  });

  it('a connection given up while the tunnel opens does not fail the others waiting for it', async () => {
    const { server } = tunnelPair();
    let opened = 0;
    // Slow to open, and honouring its signal as libp2p's dial does.
    const dialer = new TunnelDialer(async (_peer, signal) => {
      opened++;
      await new Promise((resolve, reject) => {
        const timer = setTimeout(resolve, 100);
        signal.addEventListener('abort', () => {
          clearTimeout(timer);
          reject(signal.reason);
        });
      });
      const [near, far] = duplexPair();
      server.serve(far);
      return near;
    });
    const quitter = new AbortController();
    const header = encodeRemoteHeader({ taskId: 'echo' });
    const first = dialer.dial('peer-b', header, quitter.signal);
    const second = dialer.dial('peer-b', header, AbortSignal.timeout(5000));
    quitter.abort(new Error('client left'));
    await expect(first).rejects.toThrow('client left');
    expect((await exchange(await second, 'patient')).subarray(1).toString()).toBe('patient');
    expect(opened).toBe(1);
    dialer.close();
    server.close();
  });

  it('refuses anything but CONNECT, and survives a transport that does not speak HTTP/2', async () => {
    const { server, dialer } = tunnelPair();
    const [near, far] = duplexPair();
    server.serve(far);
    const session = http2Connect('http://swarmd-lb', { createConnection: () => near });
    session.on('error', () => {});
    const code = await new Promise<number>((resolve) => {
      const req = session.request({ ':method': 'GET', ':path': '/' });
      req.on('error', () => {});
      req.on('close', () => resolve(req.rstCode));
      req.end();
    });
    expect(code).toBe(constants.NGHTTP2_REFUSED_STREAM);
    session.destroy();

    const [junk, junkFar] = duplexPair();
    const junkClosed = new Promise<void>((resolve) => junkFar.once('close', () => resolve()));
    server.serve(junkFar);
    junk.on('error', () => {});
    junk.resume();
    junk.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    junk.write(Buffer.alloc(4096, 0xff));
    await junkClosed;

    // The server still serves real tunnels.
    const stream = await dialer.dial('peer-b', encodeRemoteHeader({ taskId: 'echo' }), AbortSignal.timeout(5000));
    expect((await exchange(stream, 'still up')).subarray(1).toString()).toBe('still up');
    dialer.close();
    server.close();
  });
});
