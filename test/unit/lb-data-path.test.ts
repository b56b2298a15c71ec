// The load balancer's data path (daemon/lb/data-path.ts): HTTP/2 tunnels over real TLS 1.3 connections on
// loopback, keyed with one-time tickets. What a ticket admits (one handshake, by the holder of its key, in time),
// what it does not, and the fallback to the mesh. The mesh request for tickets runs in test/integration/lb.test.ts.
import { type AddressInfo, createServer, connect as tcpConnect } from 'node:net';
import { duplexPair } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import {
  DataPathServer,
  type DataPathTicket,
  dialDataPath,
  directFirst,
  FALLBACK_MS,
  HEAD_START_MS,
  parseTicketReply,
  TICKET_KEY_BYTES,
} from '../../daemon/lb/data-path.ts';
import { serveRemote } from '../../daemon/lb/remote.ts';
import { TunnelDialer, TunnelServer } from '../../daemon/lb/tunnel.ts';
import { echoTaskForFile, expectEchoes } from '../helpers/echo-task.ts';

const echo = echoTaskForFile();

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A data path listener whose tunnels reach the echo task, as a node's would. */
async function dataPathNode() {
  const tunnels = new TunnelServer(
    (stream) => void serveRemote(stream, (id) => (id === 'echo' ? echo.address() : undefined)),
  );
  const peers: string[] = [];
  const server = new DataPathServer({
    host: '127.0.0.1',
    port: 0,
    onTunnel: (socket, peerId) => {
      peers.push(peerId);
      tunnels.serve(socket, 'direct');
    },
    log: () => {},
  });
  await server.listen();
  cleanups.push(
    () => tunnels.close(),
    () => server.close(),
  );
  const ticket = (peerId = 'peer-a'): DataPathTicket => ({ host: '127.0.0.1', ...server.issue(peerId) });
  return { server, tunnels, peers, ticket };
}

/** Whether a handshake with this ticket succeeds (the socket is closed either way). */
async function handshakes(ticket: DataPathTicket): Promise<boolean> {
  try {
    const socket = await dialDataPath(ticket, AbortSignal.timeout(5000));
    socket.destroy();
    return true;
  } catch {
    return false;
  }
}

describe('load balancer data path', () => {
  it('carries forwarded connections in an HTTP/2 tunnel over TLS 1.3, keyed by the ticket', async () => {
    const node = await dataPathNode();
    const paths = directFirst(
      async () => node.ticket(),
      () => Promise.reject(new Error('not the mesh')),
      () => {},
    );
    const dialer = new TunnelDialer(paths.open);
    cleanups.push(() => dialer.close());
    await expectEchoes(dialer, 10, 'hello');
    // One tunnel for all ten, over the data path, and the server knows whose ticket opened it.
    expect(paths.counts()).toEqual({ direct: 1, mesh: 0, native: 0, mux: 0 });
    expect(node.tunnels.counts()).toEqual({ direct: 1, mesh: 0, native: 0, mux: 0 });
    expect(node.peers).toEqual(['peer-a']);
    expect(node.server.outstanding).toBe(0);
  });

  it('negotiates TLS 1.3 with an ephemeral key exchange, not the bare PSK', async () => {
    const node = await dataPathNode();
    const socket = await dialDataPath(node.ticket(), AbortSignal.timeout(5000));
    cleanups.push(() => socket.destroy());
    expect(socket.getProtocol()).toBe('TLSv1.3');
    expect(socket.alpnProtocol).toBe('h2');
    // A key exchange group was used (psk_dhe_ke; with Node 24's OpenSSL the hybrid X25519MLKEM768): traffic recorded
    // now is of no use to whoever learns the ticket later. With the bare PSK (psk_ke) there would be no group.
    const exchange = socket.getEphemeralKeyInfo() as { type?: string; name?: string };
    expect(exchange.type).toBe('TLSGroup');
    expect(exchange.name).toMatch(/X25519|P-256|P-384|MLKEM/);
  });

  it('admits one handshake per ticket, only with its key, only before it expires', async () => {
    const node = await dataPathNode();
    const ticket = node.ticket();
    expect(await handshakes(ticket)).toBe(true);
    expect(await handshakes(ticket)).toBe(false); // used once already

    const wrongKey = node.ticket();
    expect(await handshakes({ ...wrongKey, key: new Uint8Array(TICKET_KEY_BYTES).fill(1) })).toBe(false);
    // The failed attempt used that identity up as well: the right key no longer helps.
    expect(await handshakes(wrongKey)).toBe(false);

    expect(await handshakes({ ...node.ticket(), identity: 'f'.repeat(32) })).toBe(false);

    const stale = { host: '127.0.0.1', ...node.server.issue('peer-a', Date.now() - 31_000) };
    expect(await handshakes(stale)).toBe(false);
  });

  it('keeps at most 1024 unused tickets, dropping the oldest', async () => {
    const node = await dataPathNode();
    const first = node.ticket();
    for (let i = 0; i < 1100; i++) node.server.issue('peer-a');
    expect(node.server.outstanding).toBe(1024);
    expect(await handshakes(first)).toBe(false);
  });

  it('closes connections that do not speak TLS, and goes on serving', async () => {
    const node = await dataPathNode();
    const closed = await new Promise<string>((resolve) => {
      const socket = tcpConnect({ host: '127.0.0.1', port: node.server.port });
      let got = '';
      socket.on('data', (c: Buffer) => {
        got += c.toString('latin1');
      });
      socket.on('error', () => {});
      socket.on('close', () => resolve(got));
      socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    });
    // Whatever the TLS stack said (an alert, or nothing), no tunnel was opened.
    expect(closed.includes('HTTP')).toBe(false);
    expect(node.peers).toEqual([]);
    expect(await handshakes(node.ticket())).toBe(true);
  });

  it('falls back to the mesh when the data path fails, and does not try it again for a while', async () => {
    let clock = 1_000_000;
    let fetches = 0;
    const meshOpened: string[] = [];
    const logs: string[] = [];
    const paths = directFirst(
      async () => {
        fetches++;
        // A port nothing listens on: the direct dial fails.
        return { host: '127.0.0.1', port: 1, identity: 'a'.repeat(32), key: new Uint8Array(TICKET_KEY_BYTES) };
      },
      async (peerId) => {
        meshOpened.push(peerId);
        const [near] = duplexPair();
        return near;
      },
      (message) => logs.push(message),
      () => clock,
    );
    await paths.open('peer-b', AbortSignal.timeout(5000));
    expect(meshOpened).toEqual(['peer-b']);
    expect(logs.join('\n')).toMatch(/data path to peer-b failed .*using the mesh/);
    expect(paths.counts()).toEqual({ direct: 0, mesh: 1, native: 0, mux: 0 });

    await paths.open('peer-b', AbortSignal.timeout(5000));
    expect(fetches).toBe(1);
    clock += FALLBACK_MS + 1;
    await paths.open('peer-b', AbortSignal.timeout(5000));
    expect(fetches).toBe(2);
    expect(meshOpened).toEqual(['peer-b', 'peer-b', 'peer-b']);
  });

  it('tries the mesh beside a data path that stays silent, and remembers the data path failed once it times out', async () => {
    // A firewall that drops: the TCP connect succeeds here (a listener that never answers), the handshake never ends.
    const silent = createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', () => resolve()));
    const port = (silent.address() as AddressInfo).port;
    const logs: string[] = [];
    let fetches = 0;
    const paths = directFirst(
      async () => {
        fetches++;
        return { host: '127.0.0.1', port, identity: 'a'.repeat(32), key: new Uint8Array(TICKET_KEY_BYTES) };
      },
      async () => duplexPair()[0],
      (message) => logs.push(message),
    );
    try {
      const started = performance.now();
      await paths.open('peer-b', AbortSignal.timeout(10_000));
      // The mesh carried it after the head start, not after the 5 s handshake timeout.
      expect(performance.now() - started).toBeLessThan(HEAD_START_MS + 1500);
      expect(paths.counts()).toEqual({ direct: 0, mesh: 1, native: 0, mux: 0 });
      expect(logs).toEqual([]);
      await expect.poll(() => logs.join('\n'), { timeout: 8000 }).toMatch(/data path to peer-b failed .*no handshake/);
      // Remembered: the next tunnel goes through the mesh at once, without a ticket.
      await paths.open('peer-b', AbortSignal.timeout(10_000));
      expect(fetches).toBe(1);
      expect(paths.counts()).toEqual({ direct: 0, mesh: 2, native: 0, mux: 0 });
    } finally {
      silent.close();
    }
  }, 15_000);

  it('uses the mesh for a peer without a data path (ticket undefined), and always without fetchTicket', async () => {
    const mesh = async () => duplexPair()[0];
    const none = directFirst(
      async () => undefined,
      mesh,
      () => {},
    );
    await none.open('peer-b', AbortSignal.timeout(5000));
    expect(none.counts()).toEqual({ direct: 0, mesh: 1, native: 0, mux: 0 });
    const off = directFirst(undefined, mesh, () => {});
    await off.open('peer-b', AbortSignal.timeout(5000));
    expect(off.counts()).toEqual({ direct: 0, mesh: 1, native: 0, mux: 0 });
  });

  it('checks ticket replies from peers and names what is wrong', () => {
    const good = { port: 4000, identity: 'a'.repeat(32), key: new Uint8Array(TICKET_KEY_BYTES) };
    expect(parseTicketReply(good)).toEqual(good);
    expect(parseTicketReply({ off: true })).toEqual({ off: true });
    // What the peer's relay serves: kept only as `true`; a mux only with the relay; anything else dropped.
    expect(parseTicketReply({ ...good, relay: true, mux: true })).toEqual({ ...good, relay: true, mux: true });
    expect(parseTicketReply({ ...good, relay: true, mux: 1 })).toEqual({ ...good, relay: true });
    expect(parseTicketReply({ ...good, mux: true })).toEqual(good);
    expect(() => parseTicketReply('x')).toThrow(/not an object/);
    expect(() => parseTicketReply({ ...good, port: 70000 })).toThrow(/port must be 1-65535, got 70000/);
    expect(() => parseTicketReply({ ...good, identity: '../etc' })).toThrow(/identity must be 32 hex/);
    expect(() => parseTicketReply({ ...good, key: new Uint8Array(3) })).toThrow(/key must be 32 bytes/);
    expect(() => parseTicketReply({ ...good, key: 'k'.repeat(32) })).toThrow(/key must be 32 bytes/);
  });
});
