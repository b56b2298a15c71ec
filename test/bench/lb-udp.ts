// npm run bench -- lb-udp
// The UDP ingress (daemon/lb/udp-ingress.ts) against nginx's UDP proxy (the stream module), on loopback, the way
// the TCP bench (lb.ts) measures against HAProxy, which has no UDP: 64 flows (client sockets), each sending a
// datagram and waiting for its answer in a loop, from 2 load threads in their own process, for SECONDS.
//
// Backends: 3 nginx servers answering every datagram with "backend N" (stream `return`, 1 worker each).
// Targets, each in its own processes:
//   direct        load -> backend 1
//   nginx         load -> nginx stream proxy, udp, round-robin over the 3 backends, a session per client socket
//                 (proxy_timeout 60 s, as swarmd's flows), worker_processes auto with reuseport
//   swarmd        load -> UdpIngress (one Node process, one thread), round-robin over the 3 backends
//   swarmd-mesh   load -> UdpIngress -> a loopback TCP connection per flow carrying framed datagrams (the stand-in
//                 for the tunnel stream; no TLS or HTTP/2) -> serveRemote process -> backend
//   daemon-local  real swarmd daemons (lib/lb-swarm.ts): load -> the worker's published UDP port, 3 local tasks
//                 (nginx answering each datagram on $PORT)
//   daemon-mesh   load -> the manager's published port: each flow crosses to the worker in a stream of the HTTP/2
//                 tunnel over the data path (TLS 1.3), which relays it to a task
//   *-t0          the same two with --lb-threads 0 (ports served in the daemon's main thread)
// Each figure is the median over interleaved rounds; CPU seconds of the proxy processes are reported per request.
// Needs nginx with the stream module (Debian: apt-get install -y nginx libnginx-mod-stream); says so when missing.
// BENCH_LB_SECONDS and BENCH_LB_ROUNDS shorten a run. This file is also the entry point of its child processes.

import { createSocket } from 'node:dgram';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { defaultLbThreads } from '../../daemon/lb/ingress-threads.ts';
import { UdpIngress } from '../../daemon/lb/udp-ingress.ts';
import { dialLoopback } from '../helpers/loopback-dial.ts';
import { freePort } from '../helpers/loopback-tcp.ts';
import type { SwarmProcesses } from '../helpers/swarm-processes.ts';
import { round } from './lib/http-load.ts';
import { endpointsFor, runServeRemoteNode } from './lib/lb-roles.ts';
import { type BenchService, type SwarmVariant, startBenchSwarm, stopBenchSwarms } from './lib/lb-swarm.ts';
import { cpuSeconds, have, median } from './lib/measure.ts';
import { killHard, type Started, startProcess } from './lib/processes.ts';

const SECONDS = Number(process.env.BENCH_LB_SECONDS ?? 10);
const ROUNDS = Number(process.env.BENCH_LB_ROUNDS ?? 3);
const FLOWS = 64;
const LOAD_THREADS = 2;
const STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';
const SELF = fileURLToPath(import.meta.url);
const CHILD_MAX_SECONDS = 1800;

// ---------------------------------------------------------------------------------------------------------------
// Child processes: --role ingress|node|load

const arg = (name: string) => {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 ? process.argv[at + 1] : undefined;
};

async function runIngress(): Promise<void> {
  const backends = (arg('backends') ?? '').split(',');
  const node = arg('node');
  const view = endpointsFor(backends, node === undefined ? 'local' : 'remote');
  const ingress = new UdpIngress({
    nodeId: 'local',
    host: '127.0.0.1',
    port: Number(arg('port')),
    services: () => view,
    ...(node === undefined
      ? {}
      : {
          dialRemote: (_endpoint, header, signal) =>
            dialLoopback('127.0.0.1', Number(node.slice(node.lastIndexOf(':') + 1)), header, signal),
        }),
    log: (msg) => process.stderr.write(`${msg}\n`),
  });
  await ingress.listen();
  process.stdout.write(`udp ingress listening on ${ingress.port}\n`);
}

interface LoadResult {
  answered: number;
  lost: number;
  /** Latency histogram in 10 µs buckets, up to 100 ms. */
  histogram: number[];
}

const BUCKET_US = 10;
const BUCKETS = 10_000;

/** One load thread: `flows` sockets, each a request/answer loop for `seconds`; a datagram unanswered in 1 s is lost. */
async function loadThread(host: string, port: number, flows: number, seconds: number): Promise<LoadResult> {
  const result: LoadResult = { answered: 0, lost: 0, histogram: new Array(BUCKETS).fill(0) };
  const until = performance.now() + seconds * 1000;
  const payload = Buffer.from('q'.repeat(32));
  await Promise.all(
    Array.from({ length: flows }, async () => {
      const socket = createSocket('udp4');
      await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
      socket.connect(port, host);
      await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
      socket.on('error', () => {});
      while (performance.now() < until) {
        const sent = performance.now();
        const answered = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), 1000);
          socket.once('message', () => {
            clearTimeout(timer);
            resolve(true);
          });
          socket.send(payload);
        });
        socket.removeAllListeners('message');
        if (!answered) {
          result.lost++;
          continue;
        }
        result.answered++;
        const us = (performance.now() - sent) * 1000;
        result.histogram[Math.min(BUCKETS - 1, Math.floor(us / BUCKET_US))]!++;
      }
      socket.close();
    }),
  );
  return result;
}

async function runLoad(): Promise<void> {
  const port = Number(arg('port'));
  const host = arg('host') ?? '127.0.0.1';
  const seconds = Number(arg('seconds'));
  const results = await Promise.all(
    Array.from(
      { length: LOAD_THREADS },
      () =>
        new Promise<LoadResult>((resolve, reject) => {
          const worker = new Worker(SELF, { workerData: { host, port, flows: FLOWS / LOAD_THREADS, seconds } });
          worker.once('message', resolve);
          worker.once('error', reject);
        }),
    ),
  );
  const total: LoadResult = { answered: 0, lost: 0, histogram: new Array(BUCKETS).fill(0) };
  for (const r of results) {
    total.answered += r.answered;
    total.lost += r.lost;
    r.histogram.forEach((n, i) => {
      total.histogram[i]! += n;
    });
  }
  const quantile = (q: number) => {
    let seen = 0;
    for (const [i, n] of total.histogram.entries()) {
      seen += n;
      if (seen >= q * total.answered) return ((i + 1) * BUCKET_US) / 1000;
    }
    return Number.NaN;
  };
  process.stdout.write(
    `${JSON.stringify({ rps: round(total.answered / seconds, 0), lost: total.lost, p50Ms: quantile(0.5), p99Ms: quantile(0.99) })}\n`,
  );
  process.exit(0);
}

if (!isMainThread && workerData?.flows !== undefined) {
  const { host, port, flows, seconds } = workerData as { host: string; port: number; flows: number; seconds: number };
  parentPort!.postMessage(await loadThread(host, port, flows, seconds));
} else if (isMainThread && arg('role') !== undefined) {
  setTimeout(() => process.exit(0), Number(arg('max-seconds') ?? CHILD_MAX_SECONDS) * 1000).unref();
  const role = arg('role');
  if (role === 'ingress') await runIngress();
  else if (role === 'node') await runServeRemoteNode(Number(arg('port')), (arg('backends') ?? '').split(','));
  else if (role === 'load') await runLoad();
  else throw new Error(`unknown role ${role}`);
}

// ---------------------------------------------------------------------------------------------------------------
// The bench

/** Whether something on host:port answers a datagram within 300 ms. */
function udpAnswers(port: number, host = '127.0.0.1'): Promise<boolean> {
  const socket = createSocket('udp4');
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 300);
    socket.once('message', () => {
      clearTimeout(timer);
      resolve(true);
    });
    socket.on('error', () => resolve(false));
    socket.send('ready?', port, host);
  }).finally(() => socket.close());
}

/** A free port for UDP as well as TCP (freePort checks TCP). */
async function freeUdpPort(): Promise<number> {
  for (;;) {
    const port = await freePort();
    const socket = createSocket('udp4');
    const ok = await new Promise<boolean>((resolve) => {
      socket.once('error', () => resolve(false));
      socket.bind(port, '127.0.0.1', () => resolve(true));
    });
    await new Promise<void>((resolve) => socket.close(() => resolve()));
    if (ok) return port;
  }
}

function startNginx(
  dir: string,
  name: string,
  workers: string,
  streamBlock: string,
  readyPort: number,
): Promise<Started> {
  const conf = join(dir, `${name}.conf`);
  writeFileSync(
    conf,
    `load_module ${STREAM_MODULE};
master_process ${workers === '1' ? 'off' : 'on'};
worker_processes ${workers};
pid ${dir}/${name}.pid;
error_log ${dir}/${name}.error.log warn;
events { worker_connections 8192; }
stream {
${streamBlock}
}
`,
  );
  return startProcess('nginx', ['-p', `${dir}/`, '-c', conf, '-g', 'daemon off;'], join(dir, `${name}.log`), () =>
    udpAnswers(readyPort),
  );
}

function nodeChild(dir: string, name: string, args: string[], ready: () => Promise<boolean>): Promise<Started> {
  return startProcess(process.execPath, [SELF, ...args], join(dir, `${name}.log`), ready);
}

interface Target {
  name: string;
  port: number;
  /** Where the load goes; default 127.0.0.1. */
  host?: string;
  pids: number[];
  note: string;
}

async function measure(dir: string, target: Target, seconds: number) {
  const cpu0 = target.pids.map(cpuSeconds);
  const out = await new Promise<string>((resolve, reject) => {
    let text = '';
    const child = startProcess(
      process.execPath,
      [
        SELF,
        '--role',
        'load',
        '--host',
        target.host ?? '127.0.0.1',
        '--port',
        String(target.port),
        '--seconds',
        String(seconds),
      ],
      join(dir, `load-${target.name}.log`),
      async () => true,
    );
    child.then(({ child: proc }) => {
      proc.stdout!.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      proc.once('exit', () => resolve(text));
    }, reject);
  });
  const cpu = target.pids.map(cpuSeconds).reduce((a, c) => a + c, 0) - cpu0.reduce((a, c) => a + c, 0);
  const line = out.trim().split('\n').pop() ?? '{}';
  const result = JSON.parse(line) as { rps: number; lost: number; p50Ms: number; p99Ms: number };
  return { ...result, proxyCpuSeconds: target.pids.length === 0 ? null : round(cpu) };
}

export async function benchLbUdp(): Promise<Record<string, unknown>> {
  if (!have('nginx') || !existsSync(STREAM_MODULE)) {
    process.stdout.write(
      'lb-udp bench: needs nginx with its stream module (apt-get install -y nginx libnginx-mod-stream)\n',
    );
    return { bench: 'lb-udp', skipped: 'nginx stream module not installed' };
  }
  const dir = mkdtempSync(join(tmpdir(), 'swarmd-bench-lb-udp-'));
  // The swarm's tasks run as nobody when the daemons run as root, and must reach their directory in here.
  chmodSync(dir, 0o755);
  const started: Started[] = [];
  const clusters: SwarmProcesses[] = [];
  /** nginx's workers: not children of this process, so killed by PID at the end. */
  const workerPids: number[] = [];
  try {
    process.stdout.write(
      `lb-udp bench: ${availableParallelism()} CPUs, Node ${process.version}, ${FLOWS} flows from ${LOAD_THREADS} load threads, ` +
        `${SECONDS}s x ${ROUNDS} interleaved rounds, no CPU pinning; backends: nginx stream return (1 worker each)\n`,
    );
    const backendPorts = [await freeUdpPort(), await freeUdpPort(), await freeUdpPort()];
    const backends = backendPorts.map((p) => `127.0.0.1:${p}`);
    for (const [i, port] of backendPorts.entries()) {
      started.push(
        await startNginx(
          dir,
          `backend${i + 1}`,
          '1',
          `server { listen 127.0.0.1:${port} udp; return "backend ${i + 1}\\n"; }`,
          port,
        ),
      );
    }
    const targets: Target[] = [{ name: 'direct', port: backendPorts[0]!, pids: [], note: 'backend 1, no proxy' }];

    const nginxPort = await freeUdpPort();
    const proxy = await startNginx(
      dir,
      'proxy',
      'auto',
      `upstream backends {\n${backends.map((b) => `  server ${b};`).join('\n')}\n}\nserver { listen 127.0.0.1:${nginxPort} udp reuseport; proxy_pass backends; proxy_timeout 60s; }`,
      nginxPort,
    );
    started.push(proxy);
    // The master and its workers: the workers do the forwarding.
    const nginxPids = [proxy.pid, ...childPids(proxy.pid)];
    workerPids.push(...nginxPids.slice(1));
    targets.push({ name: 'nginx', port: nginxPort, pids: nginxPids, note: 'stream udp, round-robin, workers: auto' });

    const ingressPort = await freeUdpPort();
    const ingress = await nodeChild(
      dir,
      'ingress',
      ['--role', 'ingress', '--port', String(ingressPort), '--backends', backends.join(',')],
      () => udpAnswers(ingressPort),
    );
    started.push(ingress);
    targets.push({ name: 'swarmd', port: ingressPort, pids: [ingress.pid], note: 'UdpIngress, 1 thread, local tasks' });

    const nodePort = await freePort();
    const node = await nodeChild(
      dir,
      'node',
      ['--role', 'node', '--port', String(nodePort), '--backends', backends.join(',')],
      async () =>
        (await fetch(`http://127.0.0.1:${nodePort}/`).catch(
          (err: Error & { cause?: { code?: string } }) => err.cause?.code,
        )) !== 'ECONNREFUSED',
    );
    started.push(node);
    const meshPort = await freeUdpPort();
    const meshIngress = await nodeChild(
      dir,
      'mesh-ingress',
      [
        '--role',
        'ingress',
        '--port',
        String(meshPort),
        '--backends',
        backends.join(','),
        '--node',
        `127.0.0.1:${nodePort}`,
      ],
      () => udpAnswers(meshPort),
    );
    started.push(meshIngress);
    targets.push({
      name: 'swarmd-mesh',
      port: meshPort,
      pids: [meshIngress.pid, node.pid],
      note: 'UdpIngress -> loopback TCP per flow -> serveRemote process',
    });

    // Real daemons (lib/lb-swarm.ts): the worker's published port with its 3 local tasks (nginx answering each
    // datagram), and the manager's, where every flow crosses to the worker in a tunnel over the data path; as
    // they start by default (ingress threads here) and with the ports in the main thread (--lb-threads 0).
    const variants: SwarmVariant[] = [
      { suffix: '', flags: [], how: `--lb-threads default (${defaultLbThreads()})` },
      { suffix: '-t0', flags: ['--lb-threads', '0'], how: '--lb-threads 0' },
    ];
    for (const variant of variants) {
      const swarm = await startBenchSwarm(dir, variant, udpService());
      clusters.push(swarm.cluster);
      const pid = (name: string) => swarm.cluster.nodes.get(name)!.child.pid!;
      targets.push(
        {
          name: `daemon-local${variant.suffix}`,
          host: '127.0.0.2',
          port: swarm.port,
          pids: [pid('w1')],
          note: `swarmd daemon (worker), published UDP port, 3 local tasks, ${variant.how}`,
        },
        {
          name: `daemon-mesh${variant.suffix}`,
          host: '127.0.0.1',
          port: swarm.port,
          pids: [pid('m1'), pid('w1')],
          note: `swarmd daemon (manager) -> tunnel over the data path -> worker -> task, ${variant.how}`,
        },
      );
    }

    const rounds = new Map<string, Awaited<ReturnType<typeof measure>>[]>(targets.map((t) => [t.name, []]));
    for (const target of targets) await measure(dir, target, 2); // warm-up
    for (let r = 0; r < ROUNDS; r++) {
      for (const target of targets) {
        const result = await measure(dir, target, SECONDS);
        rounds.get(target.name)!.push(result);
        process.stdout.write(
          `  round ${r + 1} ${target.name.padEnd(16)} ${String(result.rps).padStart(8)} req/s  p50 ${result.p50Ms} ms  p99 ${result.p99Ms} ms  lost ${result.lost}` +
            `${result.proxyCpuSeconds === null ? '' : `  cpu ${result.proxyCpuSeconds} s`}\n`,
        );
      }
    }
    const summary: Record<string, Record<string, unknown>> = {};
    for (const target of targets) {
      const list = rounds.get(target.name)!;
      const rps = median(list.map((x) => x.rps));
      const cpu = median(list.map((x) => x.proxyCpuSeconds ?? Number.NaN));
      summary[target.name] = {
        rps,
        p50Ms: median(list.map((x) => x.p50Ms)),
        p99Ms: median(list.map((x) => x.p99Ms)),
        lost: list.reduce((a, x) => a + x.lost, 0),
        cpuUsPerRequest: Number.isNaN(cpu) ? null : round((cpu * 1e6) / (rps * SECONDS), 1),
        note: target.note,
      };
    }
    const nginx = summary.nginx!;
    process.stdout.write('\ntarget            req/s     p50 ms   p99 ms   CPU µs/req   vs nginx (req/s, p99)\n');
    for (const [name, s] of Object.entries(summary)) {
      const vs =
        name === 'nginx' || name === 'direct'
          ? ''
          : `${round((s.rps as number) / (nginx.rps as number))}x, ${round((s.p99Ms as number) / (nginx.p99Ms as number))}x`;
      s.vsNginx = vs || null;
      process.stdout.write(
        `${name.padEnd(16)} ${String(s.rps).padStart(8)} ${String(s.p50Ms).padStart(8)} ${String(s.p99Ms).padStart(8)} ${String(s.cpuUsPerRequest ?? '-').padStart(12)}   ${vs}\n`,
      );
    }
    return { bench: 'lb-udp', seconds: SECONDS, rounds: ROUNDS, flows: FLOWS, targets: summary };
  } finally {
    await stopBenchSwarms(dir, clusters);
    await Promise.all(started.map(killHard));
    for (const pid of workerPids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone with its master
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The UDP service of the bench's swarm: nginx tasks answering every datagram on $PORT. */
function udpService(): BenchService {
  const command = [
    'd=TASKS/$PORT; mkdir -p $d',
    `printf 'load_module ${STREAM_MODULE}; master_process off; worker_processes 1; pid %s/pid; error_log %s/error.log warn; events { worker_connections 4096; } stream { server { listen 127.0.0.1:%s udp; return task; } }' $d $d $PORT > $d/nginx.conf`,
    "exec nginx -p $d/ -c $d/nginx.conf -g 'daemon off;'",
  ].join('; ');
  return { publish: 'PORT:53/udp', command, ready: udpAnswers };
}

/** The PIDs of a process's children (nginx's workers), from /proc. */
function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
