// The built-in load balancer end to end on a 3-node swarm of real processes (1 manager, 2 workers), process runtime:
// a published port on every node (each node's ingress on its own loopback address, 127.0.0.1-3, since all three
// share this host) reaches every task, local or over the mesh; a killed task costs no request; a stranger cannot
// open the load balancer's mesh protocol; a port another service publishes is refused; a rolling update under a
// request loop loses no request; PROXY protocol v2 gives the backend the client's address; a dead node's tasks
// are replaced and every other node keeps answering.
//
// The daemons run the bundle (npm run build), as shipped: its ingress threads load from a file of their own, and
// the native relay is copied next to it. m1 and w1 move forwarded bytes in the native relay (built in CI), w2 in
// JavaScript (--lb-relay js).
//
// Tasks share the host's network, so each listens on the host port its node gives it in $PORT (the --publish
// target only documents the container port); the backend answers "PORT PID".

import { createSocket as createUdpSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { get as httpGet, request as httpRequest } from 'node:http';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBundle } from '../../cli/build.ts';
import type { Task } from '../../daemon/api/services.ts';
import type { SwarmNode } from '../../daemon/api/types.ts';
import { dialDataPath } from '../../daemon/lb/data-path.ts';
import { encodeRemoteHeader } from '../../daemon/lb/remote.ts';
import { TunnelDialer } from '../../daemon/lb/tunnel.ts';
import { createMeshHost } from '../../daemon/mesh/host.ts';
import { PROTOCOLS } from '../../daemon/mesh/protocols.ts';
import { type NodeProcess, SwarmProcesses, swarm, swarmJson, waitFor } from '../helpers/swarm-processes.ts';
import { askUdp } from '../helpers/udp-ask.ts';

const DIST = mkdtempSync(join(tmpdir(), 'swarmd-lb-dist-'));
const cluster = new SwarmProcesses('lb', { swarmdArgs: [join(DIST, 'swarmd.mjs')] });
const BASE = cluster.basePort;
const PUBLISHED = BASE + 3;
const UDP_PUBLISHED = BASE + 4;
const HOSTS = { m1: '127.0.0.1', w1: '127.0.0.2', w2: '127.0.0.3' } as const;
let m1: NodeProcess;
let w1: NodeProcess;
let w2: NodeProcess;
/** Backend PIDs seen in answers: killed at the end whatever happens (they are this test's tasks). */
const pids = new Set<number>();

// The task's program (its own template literal, escaped): answers "PORT PID" on $PORT.
const BACKEND = `require('node:http').createServer((req, res) => res.end(\`\${process.env.PORT} \${process.pid}\`)).listen(Number(process.env.PORT), '127.0.0.1');`;

// A UDP task: answers each datagram with "PORT PID payload" on $PORT.
const UDP_BACKEND = `const s = require('node:dgram').createSocket('udp4'); s.on('message', (m, r) => s.send(\`\${process.env.PORT} \${process.pid} \${m}\`, r.port, r.address)); s.bind(Number(process.env.PORT), '127.0.0.1');`;

/** One datagram to host:port from a socket of its own (a new flow); the answer, its task's PID noted (2 s bound). */
async function udpAsk(host: string, port: number, payload: string): Promise<string> {
  const answer = await askUdp(host, port, payload, 2000);
  const pid = Number(answer.split(' ')[1]);
  if (pid > 0) pids.add(pid);
  return answer;
}

/** One HTTP request on a new connection; resolves with the body, rejects on any failure (bounded by 10 s). */
function fetchOnce(host: string, port = PUBLISHED): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpGet({ host, port, path: '/', agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => {
        const pid = Number(body.split(' ')[1]);
        if (pid > 0) pids.add(pid);
        resolve(body);
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
  });
}

/** Ports (from "PORT PID") answered by `count` sequential requests; failures are counted, not thrown. */
async function sample(host: string, count: number): Promise<{ ports: Set<string>; failures: string[] }> {
  const ports = new Set<string>();
  const failures: string[] = [];
  for (let i = 0; i < count; i++) {
    try {
      ports.add((await fetchOnce(host)).split(' ')[0]!);
    } catch (error) {
      failures.push((error as Error).message);
    }
  }
  return { ports, failures };
}

async function until(check: () => Promise<boolean>, timeoutMs: number, describe: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms:\n${describe()}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

const ready = () =>
  swarmJson<Task[]>(m1, 'service', 'ps', 'web').filter(
    (t) => t.desiredState === 'running' && t.status.state === 'running' && t.status.address,
  );
const taskPorts = () => new Set(ready().map((t) => t.status.address!.split(':')[1]!));

beforeAll(async () => {
  await buildBundle(DIST);
  // Both ways of serving published ports: ingress threads (m1, w1) and the daemon's main thread (w2). Both ways
  // between nodes: tunnels to w1 over the data path (direct TLS), to w2 through the mesh (its data path is off).
  // Both ways of moving a local connection's bytes: the native relay (m1, w1: auto) and JavaScript (w2).
  m1 = await cluster.init('m1', ['--ingress-host', HOSTS.m1, '--lb-threads', '2']);
  const token = swarm(m1, 'join-token', '-q', 'worker').stdout.trim();
  w1 = await cluster.join('w1', token, m1, ['--ingress-host', HOSTS.w1, '--lb-threads', '2']);
  w2 = await cluster.join('w2', token, m1, [
    '--ingress-host',
    HOSTS.w2,
    '--lb-threads',
    '0',
    '--data-path-port',
    'off',
    '--lb-relay',
    'js',
  ]);
  await waitFor(
    () =>
      swarmJson<{ status: { state: string } }[]>(m1, 'node', 'ls').filter((n) => n.status.state === 'ready').length ===
      3,
    60_000,
    () => swarm(m1, 'node', 'ls').stdout,
  );
}, 120_000);

afterAll(async () => {
  swarm(m1, 'service', 'rm', 'web');
  await new Promise((r) => setTimeout(r, 2000));
  await cluster.stopAll();
  rmSync(DIST, { recursive: true, force: true });
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

describe('load balancer', () => {
  it('each daemon says how it moves forwarded bytes: the native relay by default where built, JS where asked', () => {
    expect(m1.output()).toMatch(/lb: moving forwarded bytes in the native relay \(\d+ threads\)/);
    expect(w1.output()).toMatch(/lb: moving forwarded bytes in the native relay/);
    expect(w2.output()).not.toMatch(/native relay/);
  });

  it('every node, the manager without a task included, reaches all three tasks', async () => {
    const created = swarm(
      m1,
      'service',
      'create',
      '--detach',
      '--name',
      'web',
      '--replicas',
      '3',
      '--constraint',
      'node.role!=manager',
      '--restart-delay',
      '0s',
      '--stop-grace-period',
      '2s',
      '--publish',
      `${PUBLISHED}:80`,
      '--',
      process.execPath,
      '-e',
      BACKEND,
    );
    expect(created.status, created.stderr).toBe(0);
    await waitFor(
      () => ready().length === 3,
      60_000,
      () => swarm(m1, 'service', 'ps', 'web').stdout,
    );
    expect(ready().every((t) => t.nodeId !== swarmJson<{ nodeId: string }>(m1, 'info').nodeId)).toBe(true);
    for (const host of Object.values(HOSTS)) {
      // Until the node has the table with all three: then round-robin over 6 new connections shows each of them.
      // (The ports are read again each time: a task replaced meanwhile, on a loaded machine, has a new one.)
      let last = '';
      await until(
        async () => {
          const { ports, failures } = await sample(host, 6);
          const expected = taskPorts();
          last = `${host}: ports ${[...ports].join(',')} failures ${failures.join('; ')}; tasks ${[...expected].join(',')}`;
          return expected.size === 3 && [...expected].every((p) => ports.has(p));
        },
        30_000,
        () => `${last}\n${swarm(m1, 'service', 'ps', 'web').stdout}`,
      );
    }
    // Which way each node served them (see beforeAll).
    for (const node of [m1, w1]) expect(node.output()).toContain('lb: published ports served by 2 thread(s)');
    expect(w2.output()).not.toContain('served by');
    expect(w2.output()).toContain(`lb: listening on published port ${PUBLISHED}`);
  }, 120_000);

  it('serves the counters of this node in the Prometheus format on GET /v1/metrics', async () => {
    const metricsOf = (node: NodeProcess) =>
      new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
        const req = httpRequest({ socketPath: node.socket, path: '/v1/metrics', timeout: 10_000 }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            body += chunk;
          });
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }),
          );
        });
        req.on('error', reject);
        req.end();
      });
    const text = await metricsOf(m1);
    expect(text.status).toBe(200);
    expect(text.type).toMatch(/^text\/plain; version=0.0.4/);
    expect(text.body).toMatch(/swarmd_lb_service_connections_total\{[^}]*web[^}]*\} [1-9]/);
    // m1 runs no task: everything it accepted went to the workers, which served it: to w1 in native hops (both
    // relay natively), to w2 (data path off) through a tunnel over the mesh.
    expect(text.body).toMatch(/^swarmd_lb_tunnels\{direction="out",path="mesh"\} [1-9]/m);
    // Its native hops to w1 are streams of muxes (one per relay thread and ingress thread at most).
    expect(text.body).toMatch(/^swarmd_lb_tunnels\{direction="out",path="mux"\} [1-9]/m);
    // The main thread's event-loop delay since the previous scrape: a number of seconds, well under one on this run.
    const delay = /^swarmd_event_loop_delay_seconds\{quantile="0\.99"\} (\S+)$/m.exec(text.body)?.[1];
    expect(Number(delay)).toBeGreaterThanOrEqual(0);
    expect(Number(delay)).toBeLessThan(1);
    const [atW1, atW2] = await Promise.all([w1, w2].map(metricsOf));
    for (const worker of [atW1!, atW2!])
      expect(worker.body).toMatch(/^swarmd_lb_mesh_streams_total\{result="served"\} [1-9]/m);
    expect(atW1!.body).toMatch(/^swarmd_lb_native_hops_served_total [1-9]/m);
    expect(atW2!.body).toMatch(/^swarmd_lb_native_hops_served_total 0$/m);
    expect(atW1!.body).toMatch(/^swarmd_lb_tunnels\{direction="in",path="mux"\} [1-9]/m);
    expect(atW2!.body).toMatch(/^swarmd_lb_tunnels\{direction="in",path="mux"\} 0$/m);
    expect(atW2!.body).toMatch(/^swarmd_lb_tunnels\{direction="in",path="direct"\} 0$/m);
    expect(atW2!.body).toMatch(/^swarmd_lb_tunnels\{direction="in",path="mesh"\} [1-9]/m);
    // With its data path off, w2 also opens its own tunnels (to w1) through the mesh.
    expect(atW2!.body).toMatch(/^swarmd_lb_tunnels\{direction="out",path="direct"\} 0$/m);
  });

  it('a killed task costs no request: connections go to the others', async () => {
    const victim = ready().find((t) => t.nodeId !== null)!;
    const port = victim.status.address!.split(':')[1]!;
    // The victim's PID from its own answer: ask a node until it answers from that port (round-robin, bounded).
    let pid = 0;
    for (let i = 0; i < 12 && pid === 0; i++) {
      const [answerPort, answerPid] = (await fetchOnce(HOSTS.m1)).split(' ');
      if (answerPort === port) pid = Number(answerPid);
    }
    expect(pid).toBeGreaterThan(0);
    process.kill(pid, 'SIGKILL');
    // Before anyone learns of it: a connect to it fails and is retried on another task.
    for (const host of Object.values(HOSTS)) {
      const { failures } = await sample(host, 9);
      expect(failures, host).toEqual([]);
    }
    // And the replacement joins the rotation once running.
    await waitFor(
      () => ready().length === 3 && !taskPorts().has(port),
      60_000,
      () => swarm(m1, 'service', 'ps', 'web').stdout,
    );
    const expected = taskPorts();
    let last = '';
    await until(
      async () => {
        const { ports, failures } = await sample(HOSTS.w1, 6);
        last = `ports ${[...ports].join(',')} failures ${failures.join('; ')}`;
        return failures.length === 0 && [...expected].every((p) => ports.has(p));
      },
      30_000,
      () => last,
    );
  }, 120_000);

  it('a peer that is not a member cannot open the load balancer protocol', async () => {
    const info = swarmJson<{ listenAddrs: string[] }>(w1, 'info');
    const address = info.listenAddrs.find((a) => a.includes('/ip4/127.0.0.1/'))!;
    const peerId = address.slice(address.lastIndexOf('/p2p/') + 5);
    const stranger = await createMeshHost({
      privateKey: await generateKeyPair('Ed25519'),
      listen: { host: '127.0.0.1', port: 0 },
    });
    try {
      await stranger.addPeerAddresses(peerId, [address]);
      const task = ready().find((t) => t.nodeId !== null)!;
      // Speaking the real protocol: an HTTP/2 tunnel over the stream, one CONNECT stream with the remote header.
      const tunnels = new TunnelDialer((peer, signal) => stranger.openByteStream(peer, PROTOCOLS.lb, { signal }));
      const outcome = await tunnels
        .dial(peerId, encodeRemoteHeader({ taskId: task.id }), AbortSignal.timeout(10_000))
        .then(
          (stream) =>
            new Promise<string>((resolve) => {
              let received = 0;
              stream.on('data', (chunk: Buffer) => {
                received += chunk.length;
              });
              stream.on('error', () => resolve(`aborted after ${received} bytes`));
              stream.on('close', () => resolve(`closed after ${received} bytes`));
            }),
          (error: Error) => `refused: ${error.message}`,
        );
      // No status byte, let alone the task's bytes: the stream was refused before the header was read.
      expect(outcome).toMatch(/^(refused|aborted after 0 bytes|closed after 0 bytes)/);
      await waitFor(
        () => w1.output().includes(`refused ${PROTOCOLS.lb} stream from`),
        10_000,
        () => w1.output().slice(-2000),
      );
      tunnels.close();

      // Nor can it get a ticket for the data path: the ticket protocol is refused the same way...
      const ticket = await stranger
        .openStream(peerId, PROTOCOLS.lbTicket, { signal: AbortSignal.timeout(10_000) })
        .then(async ({ stream }) => {
          await stream.send({});
          return stream.read(AbortSignal.timeout(10_000));
        })
        .then(
          (reply) => `answered ${JSON.stringify(reply)}`,
          (error: Error) => `refused: ${error.message}`,
        );
      expect(ticket).toMatch(/^(refused|answered undefined)/);
      await waitFor(
        () => w1.output().includes(`refused ${PROTOCOLS.lbTicket} stream from`),
        10_000,
        () => w1.output().slice(-2000),
      );
      // ...and the data path itself admits no handshake without one.
      const dataPath = /lb: data path on ([\d.]+):(\d+)/.exec(w1.output())!;
      const guessed = await dialDataPath(
        {
          host: dataPath[1]!,
          port: Number(dataPath[2]),
          identity: '0'.repeat(32),
          key: new Uint8Array(32),
        },
        AbortSignal.timeout(10_000),
      ).then(
        (socket) => {
          socket.destroy();
          return 'handshake done';
        },
        (error: Error) => `failed: ${error.message}`,
      );
      expect(guessed).toMatch(/^failed/);
    } finally {
      await stranger.stop();
    }
  }, 60_000);

  it('refuses a published port another service already publishes, naming it', () => {
    const result = swarm(
      m1,
      'service',
      'create',
      '--detach',
      '--name',
      'other',
      '--publish',
      `${PUBLISHED}:81`,
      '--',
      '/bin/true',
    );
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain(`port ${PUBLISHED}/tcp is already published by service web`);
  });

  it('refuses a port a host program holds, naming node and program; host mode avoids such nodes', async () => {
    // A program of w1's host listens on w1's ingress address, on two ports below the kernel's ephemeral range
    // (nodes do not report ports in that range) and below every suite's node ports (from 10,000), two per slot of
    // this suite's band, so runs at once do not meet.
    const slot = (BASE % 1000) / 5;
    const held = [9000 + slot * 2, 9001 + slot * 2];
    const servers = await Promise.all(
      held.map(
        (port) =>
          new Promise<Server>((resolve, reject) => {
            const server = createServer().once('error', reject);
            server.listen(port, HOSTS.w1, () => resolve(server));
          }),
      ),
    );
    try {
      const w1Id = swarmJson<{ nodeId: string }>(w1, 'info').nodeId;
      /** The ports w1 reports held by host programs, in one protocol. */
      const reportedBy = (protocol: 'tcp' | 'udp') =>
        swarmJson<SwarmNode[]>(m1, 'node', 'ls')
          .find((n) => n.id === w1Id)!
          .description.hostPorts?.filter((p) => (p.protocol ?? 'tcp') === protocol)
          .map((p) => p.port) ?? [];
      const reported = () => reportedBy('tcp');
      // Nodes read their ports every 10 s and heartbeat when the set changed.
      await waitFor(
        () => held.every((port) => reported().includes(port)),
        30_000,
        () => String(reported()),
      );
      const refused = swarm(
        m1,
        'service',
        'create',
        '--detach',
        '--name',
        'taken',
        '--publish',
        `${held[0]}:80`,
        '--',
        '/bin/true',
      );
      expect(refused.status).not.toBe(0);
      expect(refused.stderr).toMatch(
        new RegExp(
          `port ${held[0]}/tcp is in use on node \\S+ \\(${w1Id}\\) by .+ \\(pid ${process.pid}\\), not by a swarmd service`,
        ),
      );

      // UDP is held apart: a program bound to a UDP port keeps that port from being published over UDP only.
      const udpHeld = held[0]! + 2;
      const udpProgram = createUdpSocket('udp4');
      await new Promise<void>((resolve) => udpProgram.bind(udpHeld, HOSTS.w1, () => resolve()));
      try {
        const reportedUdp = () => reportedBy('udp');
        await waitFor(
          () => reportedUdp().includes(udpHeld),
          30_000,
          () => String(reportedUdp()),
        );
        const refusedUdp = swarm(
          m1,
          'service',
          'create',
          '--detach',
          '--name',
          'udp-taken',
          '--publish',
          `${udpHeld}:53/udp`,
          '--',
          '/bin/true',
        );
        expect(refusedUdp.status).not.toBe(0);
        expect(refusedUdp.stderr).toMatch(new RegExp(`port ${udpHeld}/udp is in use on node \\S+ \\(${w1Id}\\)`));
        expect(reported()).not.toContain(udpHeld);
      } finally {
        udpProgram.close();
      }

      // Host mode: only nodes running a task listen, so w1 is left out and the tasks go to w2.
      const hostMode = swarm(
        m1,
        'service',
        'create',
        '--detach',
        '--name',
        'hostmode',
        '--replicas',
        '2',
        '--constraint',
        'node.role!=manager',
        '--publish',
        `mode=host,published=${held[1]},target=80`,
        '--',
        '/bin/sleep',
        '600',
      );
      expect(hostMode.status, hostMode.stderr).toBe(0);
      const placed = () => swarmJson<Task[]>(m1, 'service', 'ps', 'hostmode').filter((t) => t.nodeId !== null);
      await waitFor(
        () => placed().length === 2,
        30_000,
        () => swarm(m1, 'service', 'ps', 'hostmode').stdout,
      );
      expect(placed().every((t) => t.nodeId !== w1Id)).toBe(true);
    } finally {
      swarm(m1, 'service', 'rm', 'hostmode');
      for (const server of servers) server.close();
    }
  }, 60_000);

  it('a rolling update under a steady request loop loses no request', async () => {
    const before = new Set(ready().map((t) => t.id));
    const update = swarm(
      m1,
      'service',
      'update',
      '--detach',
      '--env-add',
      'VERSION=2',
      '--update-order',
      'start-first',
      '--update-monitor',
      '500ms',
      'web',
    );
    expect(update.status, update.stderr).toBe(0);
    const failures: string[] = [];
    let requests = 0;
    const hosts = Object.values(HOSTS);
    // Bounded: at most 3000 requests or 90 s, until the update completed and a few more rounds after it.
    const deadline = Date.now() + 90_000;
    let doneAt = 0;
    while (requests < 3000 && Date.now() < deadline && (doneAt === 0 || requests < doneAt + 30)) {
      try {
        await fetchOnce(hosts[requests % hosts.length]!);
      } catch (error) {
        failures.push(`${hosts[requests % hosts.length]}: ${(error as Error).message}`);
      }
      requests++;
      if (doneAt === 0 && requests % 10 === 0) {
        const [service] = swarmJson<{ updateStatus: { state: string } | null }[]>(m1, 'service', 'inspect', 'web');
        if (service?.updateStatus?.state === 'completed') doneAt = requests;
      }
    }
    expect(doneAt, `update did not complete in ${requests} requests`).toBeGreaterThan(0);
    expect(failures).toEqual([]);
    const after = ready();
    expect(after).toHaveLength(3);
    expect(after.some((t) => before.has(t.id))).toBe(false);
  }, 150_000);

  it('PROXY protocol v2: the backend sees the client address', async () => {
    const published = PUBLISHED + 1;
    // A TCP backend that decodes the PROXY v2 header (IPv4) and answers with the source address it carries.
    const backend = `require('node:net').createServer((s) => s.once('data', (b) => {
      const sig = Buffer.from([13,10,13,10,0,13,10,81,85,73,84,10]);
      if (!b.subarray(0, 12).equals(sig) || b[13] !== 0x11) return s.end('no proxy header');
      s.end(b.subarray(16, 20).join('.') + ':' + b.readUInt16BE(24) + ' ' + process.pid);
    })).listen(Number(process.env.PORT), '127.0.0.1');`;
    const created = swarm(
      m1,
      'service',
      'create',
      '--detach',
      '--name',
      'proxied',
      '--constraint',
      'node.role!=manager',
      '--publish',
      `published=${published},target=80,proxy-protocol=v2`,
      '--',
      process.execPath,
      '-e',
      backend,
    );
    expect(created.status, created.stderr).toBe(0);
    const answer = () =>
      new Promise<string>((resolve, reject) => {
        // From 127.0.0.9, a source the nodes never use themselves, to the manager's ingress (the task is remote).
        const socket = connect({ host: HOSTS.m1, port: published, localAddress: '127.0.0.9' });
        let body = '';
        socket.setEncoding('utf8');
        socket.on('connect', () => socket.write('hello'));
        socket.on('data', (chunk: string) => {
          body += chunk;
        });
        socket.on('end', () => resolve(body));
        socket.on('error', reject);
        socket.setTimeout(10_000, () => socket.destroy(new Error('timed out')));
      });
    let last = '';
    await until(
      async () => {
        last = await answer().catch((error: Error) => error.message);
        return /^127\.0\.0\.9:\d+ \d+$/.test(last);
      },
      60_000,
      () => `${last}\n${swarm(m1, 'service', 'ps', 'proxied').stdout}`,
    );
    pids.add(Number(last.split(' ')[1]));
    swarm(m1, 'service', 'rm', 'proxied');
  }, 90_000);

  it('UDP: every node forwards flows of a published UDP port to the tasks, local and over both paths', async () => {
    const created = swarm(
      m1,
      'service',
      'create',
      '--detach',
      '--name',
      'dns',
      '--replicas',
      '2',
      '--constraint',
      'node.role!=manager',
      '--replicas-max-per-node',
      '1',
      '--publish',
      `${UDP_PUBLISHED}:53/udp`,
      '--',
      process.execPath,
      '-e',
      UDP_BACKEND,
    );
    expect(created.status, created.stderr).toBe(0);
    try {
      const dnsTasks = () =>
        swarmJson<Task[]>(m1, 'service', 'ps', 'dns').filter(
          (t) => t.desiredState === 'running' && t.status.state === 'running' && t.status.address,
        );
      await waitFor(
        () => dnsTasks().length === 2,
        60_000,
        () => swarm(m1, 'service', 'ps', 'dns').stdout,
      );
      // One task on each worker: w1 is reached over the data path, w2 through the mesh (see beforeAll).
      expect(new Set(dnsTasks().map((t) => t.nodeId)).size).toBe(2);
      expect(swarm(m1, 'service', 'ls').stdout).toContain(`*:${UDP_PUBLISHED}->53/udp`);
      for (const host of Object.values(HOSTS)) {
        // Each datagram from a socket of its own is a new flow: round-robin over 6 of them shows both tasks.
        let last = '';
        await until(
          async () => {
            const answered = new Set<string>();
            const failures: string[] = [];
            for (let i = 0; i < 6; i++) {
              try {
                const answer = await udpAsk(host, UDP_PUBLISHED, `q${i}`);
                if (answer.endsWith(` q${i}`)) answered.add(answer.split(' ')[0]!);
                else failures.push(`wrong answer ${answer}`);
              } catch (error) {
                failures.push((error as Error).message);
              }
            }
            const expected = new Set(dnsTasks().map((t) => t.status.address!.split(':')[1]!));
            last = `${host}: ports ${[...answered].join(',')} failures ${failures.join('; ')}; tasks ${[...expected].join(',')}`;
            return expected.size === 2 && [...expected].every((p) => answered.has(p));
          },
          30_000,
          () => `${last}\n${swarm(m1, 'service', 'ps', 'dns').stdout}`,
        );
      }
      expect(w2.output()).toContain(`lb: listening on published port ${UDP_PUBLISHED}/udp (dns)`);
    } finally {
      swarm(m1, 'service', 'rm', 'dns');
    }
  }, 120_000);

  it("a dead node's tasks are replaced and every node keeps answering", async () => {
    const w2Id = swarmJson<{ nodeId: string }>(w2, 'info').nodeId;
    await cluster.kill9('w2');
    await waitFor(
      () => ready().length === 3 && ready().every((t) => t.nodeId !== w2Id),
      60_000,
      () => swarm(m1, 'service', 'ps', 'web').stdout,
    );
    // Once the swarm knows: no request fails, from the nodes that are left.
    let last = '';
    await until(
      async () => {
        const results = await Promise.all([sample(HOSTS.m1, 6), sample(HOSTS.w1, 6)]);
        const expected = taskPorts();
        last = results.map((r) => `ports ${[...r.ports].join(',')} failures ${r.failures.join('; ')}`).join(' | ');
        return results.every((r) => r.failures.length === 0 && [...expected].every((p) => r.ports.has(p)));
      },
      30_000,
      () => last,
    );
  }, 120_000);
});
