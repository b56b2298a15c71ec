// The ports a node reports as held by programs of its host: parsing /proc/net/tcp{,6}, what is left out (ephemeral
// ports, the node's own published ports, other addresses than the ingress's), naming the owner, and the real /proc.

import { createSocket } from 'node:dgram';
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  blocksIngress,
  ListeningPorts,
  parsePortRange,
  parseProcNetTcp,
  parseProcNetUdp,
  readListeningSockets,
} from '../../daemon/worker/listening-ports.ts';

const HEADER = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
/** One line of /proc/net/tcp as the kernel prints it. */
const line = (sl: number, local: string, state: string, inode: number) =>
  `  ${sl}: ${local} 00000000:0000 ${state} 00000000:00000000 00:00000000 00000000     0        0 ${inode} 1 0000000000000000 100 0 0 10 0\n`;

const TCP =
  HEADER +
  line(0, '00000000:1F90', '0A', 111) + // 0.0.0.0:8080, listening
  line(1, '0100007F:1538', '0A', 222) + // 127.0.0.1:5432, listening
  line(2, '0100007F:9C40', '0A', 333) + // 127.0.0.1:40000, listening, ephemeral range
  line(3, '0100007F:2382', '0A', 444) + // 127.0.0.1:9090, listening, one of the node's published ports
  line(4, '0100007F:1F90', '01', 555); // an established connection from port 8080: not a listener
const UDP =
  HEADER +
  line(0, '00000000:0035', '07', 888) + // 0.0.0.0:53, bound
  line(1, '0100007F:1F90', '07', 999) + // 127.0.0.1:8080, bound (the same number as a TCP listener)
  line(2, '0100007F:1388', '01', 1010); // 127.0.0.1:5000, connected: a client, not a server
const TCP6 =
  HEADER +
  line(0, '00000000000000000000000000000000:0016', '0A', 666) + // [::]:22
  line(1, '00000000000000000000000001000000:0019', '0A', 777); // [::1]:25

describe('parsing /proc/net/tcp', () => {
  it('reads the listening sockets with their address, port and inode', () => {
    expect(parseProcNetTcp(TCP)).toEqual([
      { address: '0.0.0.0', port: 8080, inode: 111 },
      { address: '127.0.0.1', port: 5432, inode: 222 },
      { address: '127.0.0.1', port: 40000, inode: 333 },
      { address: '127.0.0.1', port: 9090, inode: 444 },
    ]);
    expect(parseProcNetTcp(TCP6)).toEqual([
      { address: '::', port: 22, inode: 666 },
      { address: 'ipv6', port: 25, inode: 777 },
    ]);
  });

  it('reads bound UDP sockets from /proc/net/udp, not connected ones', () => {
    expect(parseProcNetUdp(UDP)).toEqual([
      { address: '0.0.0.0', port: 53, inode: 888 },
      { address: '127.0.0.1', port: 8080, inode: 999 },
    ]);
    // A TCP listener's state means nothing in a UDP file, and the other way round.
    expect(parseProcNetUdp(TCP)).toEqual([]);
    expect(parseProcNetTcp(UDP)).toEqual([]);
  });

  it('skips lines it cannot read instead of failing', () => {
    expect(parseProcNetTcp(`${HEADER}garbage\n  0: 00000000:ZZZZ 0 0A a b c d e f\n\n`)).toEqual([]);
    expect(parseProcNetTcp('')).toEqual([]);
  });

  it('reads a large file in chunks, finding every listener whatever chunk boundary it straddles', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'swarmd-proc-big-'));
    // As the kernel prints it: the listeners first (3,000, about 450 KB, several chunks), then 40,000 established
    // connections (about 6 MB).
    let text = HEADER;
    const expected: number[] = [];
    for (let i = 0; i < 43_000; i++) {
      const listening = i < 3000;
      const port = 1000 + i;
      if (listening) expected.push(port);
      text += line(i, `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`, listening ? '0A' : '01', i);
    }
    writeFileSync(join(dir, 'tcp'), text);
    const found = await readListeningSockets(join(dir, 'tcp'));
    expect(found.map((s) => s.port)).toEqual(expected);
    expect(await readListeningSockets(join(dir, 'missing'))).toEqual([]);
  });

  it('stops reading TCP at the first socket that does not listen (the kernel lists listeners first); UDP is read whole', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'swarmd-proc-order-'));
    // Two listeners, 20,000 established connections (3 MB, many chunks), then one more listening line, which the
    // kernel never prints there: not reaching it shows the rest of the file was not read.
    let text = HEADER + line(0, '00000000:1F90', '0A', 1) + line(1, '0100007F:1538', '0A', 2);
    for (let i = 2; i < 20_002; i++) text += line(i, '0100007F:1F90', '01', i + 1);
    text += line(20_002, '0100007F:2382', '0A', 99_999);
    writeFileSync(join(dir, 'tcp'), text);
    expect((await readListeningSockets(join(dir, 'tcp'))).map((s) => s.port)).toEqual([8080, 5432]);
    // UDP: bound sockets anywhere in the file are found.
    let udp = HEADER;
    for (let i = 0; i < 20_000; i++) udp += line(i, '0100007F:1388', '01', i + 1);
    udp += line(20_000, '00000000:0035', '07', 99_999);
    writeFileSync(join(dir, 'udp'), udp);
    expect((await readListeningSockets(join(dir, 'udp'), 'udp')).map((s) => s.port)).toEqual([53]);
  });

  it('reads the ephemeral range, with Linux default when it is unreadable or nonsense', () => {
    expect(parsePortRange('32768\t60999\n')).toEqual([32768, 60999]);
    expect(parsePortRange('1024 65535')).toEqual([1024, 65535]);
    expect(parsePortRange(undefined)).toEqual([32768, 60999]);
    expect(parsePortRange('9000 10')).toEqual([32768, 60999]);
  });

  it('a listener blocks an ingress on every address, or on its own address, or from the wildcard', () => {
    const at = (address: string) => ({ address, port: 80, inode: 1 });
    expect(blocksIngress(at('127.0.0.1'), undefined)).toBe(true);
    expect(blocksIngress(at('0.0.0.0'), '127.0.0.2')).toBe(true);
    expect(blocksIngress(at('::'), '127.0.0.2')).toBe(true);
    expect(blocksIngress(at('127.0.0.2'), '127.0.0.2')).toBe(true);
    expect(blocksIngress(at('127.0.0.1'), '127.0.0.2')).toBe(false);
  });
});

describe('ListeningPorts over a recorded /proc', () => {
  const proc = mkdtempSync(join(tmpdir(), 'swarmd-proc-'));
  mkdirSync(join(proc, 'net'));
  mkdirSync(join(proc, 'sys/net/ipv4'), { recursive: true });
  writeFileSync(join(proc, 'net/tcp'), TCP);
  writeFileSync(join(proc, 'net/tcp6'), TCP6);
  writeFileSync(join(proc, 'net/udp'), UDP);
  writeFileSync(join(proc, 'sys/net/ipv4/ip_local_port_range'), '32768\t60999\n');
  // Process 4242 ("nginx") holds the socket of port 8080; nobody we can see holds the others.
  mkdirSync(join(proc, '4242/fd'), { recursive: true });
  writeFileSync(join(proc, '4242/comm'), 'nginx\n');
  symlinkSync('/dev/null', join(proc, '4242/fd/0'));
  symlinkSync('socket:[111]', join(proc, '4242/fd/7'));

  it('reports the host ports outside the ephemeral range and the published ones, naming the owner it sees', async () => {
    let changes = 0;
    const ports = new ListeningPorts({
      exclude: () => ['9090/tcp', '53/udp'],
      procRoot: proc,
      onChange: () => changes++,
    });
    await ports.scan();
    // 53/udp is one of the node's published ports; 8080 is held twice, by nginx over TCP and by someone over UDP.
    expect(ports.current()).toEqual([
      { port: 22 },
      { port: 25 },
      { port: 5432 },
      { port: 8080, process: 'nginx (pid 4242)' },
      { port: 8080, protocol: 'udp' },
    ]);
    expect(changes).toBe(1);
    await ports.scan();
    expect(changes).toBe(1); // unchanged: no new heartbeat

    writeFileSync(join(proc, 'net/tcp6'), HEADER);
    await ports.scan();
    expect(ports.current().map((p) => p.port)).toEqual([5432, 8080, 8080]);
    expect(changes).toBe(2);
    writeFileSync(join(proc, 'net/tcp6'), TCP6);
  });

  it('with --ingress-host, leaves out listeners on other addresses', async () => {
    const ports = new ListeningPorts({ exclude: () => [], procRoot: proc, bindHost: '127.0.0.2' });
    await ports.scan();
    expect(ports.current().map((p) => `${p.port}/${p.protocol ?? 'tcp'}`)).toEqual(['22/tcp', '53/udp', '8080/tcp']);
  });

  it('an unreadable /proc reports no ports and does not throw', async () => {
    const ports = new ListeningPorts({ exclude: () => [], procRoot: join(proc, 'missing') });
    await ports.scan();
    expect(ports.current()).toEqual([]);
  });
});

describe('ListeningPorts over the real /proc', () => {
  let server: Server | undefined;
  afterAll(() => server?.close());

  it('sees a socket this process listens on, outside the ephemeral range, as its own', async () => {
    const [low] = parsePortRange(
      await import('node:fs/promises').then((fs) =>
        fs.readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').catch(() => undefined),
      ),
    );
    // A free port below the ephemeral range: try a few.
    for (let attempt = 0; attempt < 20 && server === undefined; attempt++) {
      const port = 20000 + Math.floor(Math.random() * Math.min(10000, low - 20000));
      const candidate = createServer();
      const ok = await new Promise<boolean>((resolve) => {
        candidate.once('error', () => resolve(false));
        candidate.listen(port, '127.0.0.1', () => resolve(true));
      });
      if (ok) server = candidate;
    }
    const port = (server!.address() as { port: number }).port;
    const ports = new ListeningPorts({ exclude: () => [] });
    await ports.scan();
    expect(ports.current()).toContainEqual({ port, process: `swarmd (pid ${process.pid})` });
    const excluded = new ListeningPorts({ exclude: () => [`${port}/tcp`] });
    await excluded.scan();
    expect(excluded.current().map((p) => p.port)).not.toContain(port);
  });

  it('sees a UDP socket this process bound, as UDP', async () => {
    // Port 0 would land in the ephemeral range, which is left out: below it, try a few.
    let bound: { socket: ReturnType<typeof createSocket>; port: number } | undefined;
    for (let attempt = 0; attempt < 20 && bound === undefined; attempt++) {
      const candidate = 20000 + Math.floor(Math.random() * 10000);
      const socket = createSocket('udp4');
      const ok = await new Promise<boolean>((resolve) => {
        socket.once('error', () => resolve(false));
        socket.bind(candidate, '127.0.0.1', () => resolve(true));
      });
      if (ok) bound = { socket, port: candidate };
      else socket.close();
    }
    try {
      const ports = new ListeningPorts({ exclude: () => [] });
      await ports.scan();
      expect(ports.current()).toContainEqual({
        port: bound!.port,
        protocol: 'udp',
        process: `swarmd (pid ${process.pid})`,
      });
    } finally {
      bound?.socket.close();
    }
  });
});
