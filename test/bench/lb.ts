// npm run bench -- lb
// The load balancer's data plane against HAProxy, on loopback, the way shared/anchors/baselines.md measured HAProxy
// (section 2): wrk -t2 -c64 --latency against 3 backends serving a 128-byte file over keep-alive connections.
// npm run bench -- lb-close: the same with a new connection per request (wrk -H 'Connection: close'), where what
// counts is each proxy's cost to accept, pick, connect and close rather than to move bytes.
//
// Targets, each in its own processes:
//   direct         wrk -> backend 1
//   haproxy        wrk -> HAProxy, mode tcp, roundrobin over the 3 backends (nbthread default: one per CPU)
//   swarmd         wrk -> Ingress (one Node process, one thread), round-robin over the 3 backends as local endpoints;
//                  each connection's bytes move in the native relay's threads (daemon/lb/native/relay.c)
//   swarmd-2acc    the same with two acceptor threads on the port (SO_REUSEPORT, worker_threads)
//   swarmd-js      as swarmd, with the bytes moved in JavaScript (pump.ts): what a Node proxy does alone
//   mesh-hop       wrk -> Ingress process -> dialRemote -> serveRemote process -> backend. The hop between the two
//                  Node processes is a LOOPBACK TCP CONNECTION PER CLIENT CONNECTION standing in for the libp2p mesh
//                  stream (no encryption, no yamux): it measures the forwarder's two-hop cost, not libp2p's.
//   daemon-local   the real thing: a 2-node swarm of swarmd processes (manager + worker), a service of 3 tasks on
//                  the worker (nginx as process-runtime tasks listening on $PORT), wrk -> the worker's published port
//   daemon-mesh    the same service, wrk -> the manager's published port: every connection crosses to the worker
//                  (a native hop: a TLS 1.3 connection of its own to the worker's data path port, keyed over the
//                  mesh and relayed by relay.c at both ends), which connects to the task
//   daemon-mesh-nodp  the same with --data-path-port off: the hop is an HTTP/2 tunnel in a libp2p mesh stream (Noise, yamux)
//   *-t0           the same two in a second swarm whose daemons serve published ports in their main thread
//                  (--lb-threads 0) rather than in ingress threads (the default with 2 CPUs or more)
// For the daemon targets the p99 of the daemons' main event-loop delay during the run is reported too (from their
// /v1/metrics): how long Raft's heartbeats and the API waited behind the load balancer.
// The targets are interleaved over rounds (the VM's speed drifts) and each figure is the median over the rounds.
//
// Backends are nginx (1 worker each, as in the anchors) when it is installed, else Node HTTP servers in their own
// processes. wrk and HAProxy come from Debian (apt-get install -y wrk haproxy nginx); without HAProxy the comparison
// is skipped, without wrk nothing can be measured and the bench says so.
//
// Backends run each in a session of their own, as the daemon rows' tasks do (the process runtime starts tasks with
// setsid). With the kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled, on by default in
// Debian) a session is a CPU group of its own: backends in the bench's session instead would share one group with
// wrk and every proxy, while the daemons' tasks each had a group to themselves, and the rows would not compare.
// CPU placement: nothing is pinned, as in the anchors. The machine has 2 cores shared by wrk (2 threads), the
// backends and the proxy, so requests/s measures the proxy's overhead under contention. The CPU seconds each proxy
// used are reported too, and per request (µs), which is the fairer comparison between proxies on a shared box.
// BENCH_LB_SECONDS, BENCH_LB_ROUNDS and BENCH_LB_ONLY (a comma list of targets) shorten a run while working on one.
//
// This file is also the entry point of the bench's child processes (`--role ...`); each exits by itself after
// --max-seconds, so a forgotten one cannot linger. Last line printed by run.ts: one JSON object.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread, Worker, workerData } from 'node:worker_threads';
import { ApiClient } from '../../daemon/api/client.ts';
import { type DialRemote, Ingress } from '../../daemon/lb/forwarder.ts';
import { defaultLbThreads } from '../../daemon/lb/ingress-threads.ts';
import { nativeRelay, type RelayMode } from '../../daemon/lb/native-relay.ts';
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
const WARMUP_SECONDS = 2;
const CONNECTIONS = 64;
const THREADS = 2;
const BODY = (n: number) => `backend ${n}\n${'x'.repeat(118)}\n`;
const SELF = fileURLToPath(import.meta.url);
const CHILD_MAX_SECONDS = 1800;

// ---------------------------------------------------------------------------------------------------------------
// Child processes

interface RoleArgs {
  role: string;
  port: number;
  backends: string[];
  node?: string;
  acceptors: number;
  relay: RelayMode;
  n: number;
  maxSeconds: number;
}

function parseRoleArgs(argv: string[]): RoleArgs {
  const arg = (name: string) => {
    const at = argv.indexOf(`--${name}`);
    return at >= 0 ? argv[at + 1] : undefined;
  };
  const node = arg('node');
  return {
    role: arg('role') ?? '',
    port: Number(arg('port') ?? 0),
    backends: (arg('backends') ?? '').split(',').filter((b) => b !== ''),
    ...(node === undefined ? {} : { node }),
    acceptors: Number(arg('acceptors') ?? 1),
    relay: arg('relay') === 'js' ? 'js' : 'native',
    n: Number(arg('n') ?? 1),
    maxSeconds: Number(arg('max-seconds') ?? CHILD_MAX_SECONDS),
  };
}

/**
 * The mesh stand-in: one loopback TCP connection per client connection to the serveRemote process. A plain socket,
 * read through 'data' events as any Duplex from dialRemote is; a libp2p stream adapter would add its own costs
 * (Noise, yamux) on top.
 */
function loopbackDialRemote(node: string): DialRemote {
  const [host, port] = [node.slice(0, node.lastIndexOf(':')), Number(node.slice(node.lastIndexOf(':') + 1))];
  return (_endpoint, header, signal) => dialLoopback(host, port, header, signal);
}

async function runIngress(args: RoleArgs): Promise<void> {
  const remote = args.node !== undefined;
  const service = endpointsFor(args.backends, remote ? 'remote-node' : 'local-node');
  const ingress = new Ingress({
    nodeId: 'local-node',
    host: '127.0.0.1',
    port: args.port,
    services: () => service,
    reusePort: args.acceptors > 1,
    relay: args.relay,
    ...(remote ? { dialRemote: loopbackDialRemote(args.node!) } : {}),
    log: (msg) => process.stderr.write(`${msg}\n`),
  });
  await ingress.listen();
  // More acceptors: the same Ingress in worker threads, on the same port; the kernel spreads connections.
  if (isMainThread) {
    for (let i = 1; i < args.acceptors; i++)
      new Worker(SELF, { argv: process.argv.slice(2), workerData: { acceptor: i } });
    process.stdout.write(`ingress listening on ${args.port} (${args.acceptors} acceptor(s))\n`);
  }
}

async function runBackend(args: RoleArgs): Promise<void> {
  const body = Buffer.from(BODY(args.n));
  const server = createHttpServer({ keepAliveTimeout: 60_000 }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html', 'content-length': body.length });
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(args.port, '127.0.0.1', () => resolve()));
  process.stdout.write(`node backend ${args.n} listening on ${args.port}\n`);
}

async function runRole(args: RoleArgs): Promise<void> {
  if (isMainThread) setTimeout(() => process.exit(0), args.maxSeconds * 1000).unref();
  if (args.role === 'ingress') await runIngress(args);
  else if (args.role === 'node') await runServeRemoteNode(args.port, args.backends);
  else if (args.role === 'backend') await runBackend(args);
  else throw new Error(`unknown role ${args.role}`);
  // The exit timer is unref'd; this keeps the process (not the worker threads) alive until then.
  if (isMainThread) setInterval(() => {}, 60_000);
}

if (import.meta.main || (!isMainThread && workerData?.acceptor !== undefined)) {
  await runRole(parseRoleArgs(process.argv.slice(2)));
}

// ---------------------------------------------------------------------------------------------------------------
// The bench

interface WrkResult {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  non2xx: number;
  proxyCpuSeconds: number | null;
}

interface Target {
  name: string;
  port: number;
  /** The proxy's processes, for CPU time; empty for direct. */
  pids: number[];
  note: string;
  /** Where wrk connects; default 127.0.0.1. */
  host?: string;
  /** API sockets of the swarmd daemons in the path: their main event loop's delay under the load is reported. */
  daemons?: string[];
}

/**
 * The p99 of a daemon's main event-loop delay since its previous scrape (GET /v1/metrics), in ms: how long Raft's
 * heartbeats and the API waited behind other work, the forwarding of this run's requests included.
 */
async function loopDelayP99Ms(socketPath: string): Promise<number> {
  const text = await new ApiClient(socketPath, { timeoutMs: 10_000 }).metrics();
  const seconds = /^swarmd_event_loop_delay_seconds\{quantile="0\.99"\} (\S+)$/m.exec(text)?.[1];
  if (seconds === undefined) throw new Error(`no event-loop delay in the metrics of ${socketPath}`);
  return round(Number(seconds) * 1000, 2);
}

async function get(port: number, host = '127.0.0.1'): Promise<string> {
  const res = await fetch(`http://${host}:${port}/index.html`, { headers: { connection: 'close' } });
  return (await res.text()).split('\n')[0]!;
}

async function httpReady(port: number, host = '127.0.0.1'): Promise<boolean> {
  return (await get(port, host).catch(() => '')).startsWith('backend');
}

function toMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text.trim());
  if (m === null) return Number.NaN;
  const v = Number(m[1]);
  return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v;
}

/** How wrk's connections carry requests: many over one (keep-alive), or one each (`Connection: close`). */
export type LbBenchMode = 'keep-alive' | 'close';

function runWrk(mode: LbBenchMode, port: number, seconds: number, pids: number[], host = '127.0.0.1'): WrkResult {
  const cpu0 = pids.map(cpuSeconds);
  const closeEach = mode === 'close' ? ['-H', 'Connection: close'] : [];
  const out = spawnSync(
    'wrk',
    [
      `-t${THREADS}`,
      `-c${CONNECTIONS}`,
      `-d${seconds}s`,
      '--latency',
      ...closeEach,
      `http://${host}:${port}/index.html`,
    ],
    { encoding: 'utf8', timeout: (seconds + 30) * 1000 },
  );
  const cpu1 = pids.map(cpuSeconds);
  const text = out.stdout ?? '';
  const num = (re: RegExp) => Number(re.exec(text)?.[1] ?? Number.NaN);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  return {
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    p50Ms: round(toMs(/^\s+50%\s+(\S+)/m.exec(text)?.[1] ?? ''), 3),
    p99Ms: round(toMs(/^\s+99%\s+(\S+)/m.exec(text)?.[1] ?? ''), 3),
    errors: socketErrors === null ? 0 : socketErrors.slice(1).reduce((a, b) => a + Number(b), 0),
    non2xx: num(/Non-2xx or 3xx responses:\s+(\d+)/) || 0,
    proxyCpuSeconds:
      pids.length === 0 ? null : round(cpu1.reduce((a, c) => a + c, 0) - cpu0.reduce((a, c) => a + c, 0)),
  };
}

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function startNginx(dir: string, n: number, port: number): Promise<Started> {
  const root = join(dir, `www${n}`);
  mkdirSync(root, { recursive: true });
  mkdirSync(join(dir, `nginx${n}`), { recursive: true });
  writeFileSync(join(root, 'index.html'), BODY(n));
  const conf = join(dir, `nginx${n}.conf`);
  writeFileSync(
    conf,
    `# One process doing the work of master and worker: killing it leaves no orphaned worker behind.
master_process off;
worker_processes 1;
pid ${dir}/nginx${n}.pid;
error_log ${dir}/nginx${n}.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/html;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:${port}; root ${root}; location / { } }
}
`,
  );
  return startProcess(
    'nginx',
    ['-p', `${join(dir, `nginx${n}`)}/`, '-c', conf, '-g', 'daemon off;'],
    join(dir, `nginx${n}.log`),
    () => httpReady(port),
    undefined,
    { ownSession: true },
  );
}

function nodeChild(
  dir: string,
  name: string,
  args: string[],
  ready: () => Promise<boolean>,
  ownSession = false,
): Promise<Started> {
  return startProcess(
    process.execPath,
    [SELF, ...args, '--max-seconds', String(CHILD_MAX_SECONDS)],
    join(dir, `${name}.log`),
    ready,
    undefined,
    { ownSession },
  );
}

/** The HTTP service of the bench's swarm (lib/lb-swarm.ts): nginx tasks, or Node ones without nginx. */
function httpService(dir: string, useNginx: boolean): BenchService {
  const nginx = [
    'd=TASKS/$PORT; mkdir -p $d',
    `printf 'master_process off; worker_processes 1; pid %s/pid; error_log %s/error.log warn; events { worker_connections 4096; } http { access_log off; default_type text/html; keepalive_requests 1000000; server { listen 127.0.0.1:%s; root ROOT; location / { } } }' $d $d $PORT > $d/nginx.conf`,
    "exec nginx -p $d/ -c $d/nginx.conf -g 'daemon off;'",
  ]
    .join('; ')
    .replaceAll('ROOT', join(dir, 'www1'));
  const node = `exec ${process.execPath} ${SELF} --role backend --port $PORT --n 1 --max-seconds ${CHILD_MAX_SECONDS}`;
  return { publish: 'PORT:80', command: useNginx ? nginx : node, ready: (port, host) => httpReady(port, host) };
}

export async function benchLb(mode: LbBenchMode = 'keep-alive'): Promise<Record<string, unknown>> {
  const missing = ['wrk', 'haproxy', 'nginx'].filter((tool) => !have(tool));
  if (missing.length > 0) {
    say(`lb bench: not installed: ${missing.join(', ')} (Debian: apt-get install -y wrk haproxy nginx)`);
  }
  if (missing.includes('wrk')) {
    say('lb bench: wrk is the load generator; nothing can be measured without it.');
    return { bench: 'lb', skipped: 'wrk not installed', missing };
  }
  const useNginx = !missing.includes('nginx');
  const useHaproxy = !missing.includes('haproxy');
  const dir = mkdtempSync(join(tmpdir(), 'swarmd-bench-lb-'));
  // nginx workers run as nobody when started by root, and must read the files.
  chmodSync(dir, 0o755);
  const started: Started[] = [];
  const swarmClusters: SwarmProcesses[] = [];
  try {
    say(
      `lb bench: ${availableParallelism()} CPUs, Node ${process.version}, wrk -t${THREADS} -c${CONNECTIONS} ` +
        `-d${SECONDS}s, ${mode === 'close' ? 'a new connection per request (Connection: close)' : 'keep-alive'}, ${ROUNDS} interleaved rounds, no CPU pinning; backends: ${useNginx ? 'nginx (1 worker each)' : 'Node HTTP (own processes)'}`,
    );
    const backendPorts = [await freePort(), await freePort(), await freePort()];
    const backendAddresses = backendPorts.map((p) => `127.0.0.1:${p}`);
    for (const [i, port] of backendPorts.entries()) {
      started.push(
        useNginx
          ? await startNginx(dir, i + 1, port)
          : await nodeChild(
              dir,
              `backend${i + 1}`,
              ['--role', 'backend', '--port', String(port), '--n', String(i + 1)],
              () => httpReady(port),
              true,
            ),
      );
    }

    const targets: Target[] = [{ name: 'direct', port: backendPorts[0]!, pids: [], note: 'backend 1, no proxy' }];

    if (useHaproxy) {
      const port = await freePort();
      const cfg = join(dir, 'haproxy.cfg');
      writeFileSync(
        cfg,
        `global
  maxconn 8192
defaults
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen l4_tcp
  mode tcp
  bind 127.0.0.1:${port}
  balance roundrobin
${backendAddresses.map((a, i) => `  server b${i + 1} ${a}`).join('\n')}
`,
      );
      const haproxy = await startProcess('haproxy', ['-db', '-f', cfg], join(dir, 'haproxy.log'), () =>
        httpReady(port),
      );
      started.push(haproxy);
      targets.push({ name: 'haproxy', port, pids: [haproxy.pid], note: 'mode tcp, roundrobin, nbthread default' });
    }

    const backends = backendAddresses.join(',');
    const native = nativeRelay();
    if (typeof native === 'string') say(`NOTE: ${native}; the swarmd rows relay in JS too`);
    const relayNote = (relay: RelayMode) =>
      relay === 'js'
        ? 'bytes moved in JS (pump.ts)'
        : typeof native === 'string'
          ? 'native relay MISSING, so JS'
          : 'native relay';
    const ingressRows: [string, number, RelayMode][] = [
      ['swarmd', 1, 'native'],
      ['swarmd-2acc', 2, 'native'],
      ['swarmd-js', 1, 'js'],
    ];
    for (const [name, acceptors, relay] of ingressRows) {
      const port = await freePort();
      const ingress = await nodeChild(
        dir,
        name,
        ['--role', 'ingress', '--port', String(port), '--backends', backends, '--acceptors', String(acceptors)].concat(
          '--relay',
          relay,
        ),
        () => httpReady(port),
      );
      started.push(ingress);
      targets.push({
        name,
        port,
        pids: [ingress.pid],
        note: `Ingress, local endpoints, ${acceptors} acceptor thread(s), ${relayNote(relay)}`,
      });
    }

    const nodePort = await freePort();
    const node = await nodeChild(
      dir,
      'node',
      ['--role', 'node', '--port', String(nodePort), '--backends', backends],
      () =>
        new Promise((resolve) => {
          const s = connect({ host: '127.0.0.1', port: nodePort }, () => {
            s.destroy();
            resolve(true);
          });
          s.on('error', () => resolve(false));
        }),
    );
    started.push(node);
    const meshPort = await freePort();
    const meshIngress = await nodeChild(
      dir,
      'ingress-mesh',
      ['--role', 'ingress', '--port', String(meshPort), '--backends', backends, '--node', `127.0.0.1:${nodePort}`],
      () => httpReady(meshPort),
    );
    started.push(meshIngress);
    targets.push({
      name: 'mesh-hop',
      port: meshPort,
      pids: [meshIngress.pid, node.pid],
      note: 'Ingress -> loopback TCP hop (NOT libp2p) -> serveRemote process -> backend',
    });

    // The daemon as it starts by default (ingress threads where there are 2 CPUs or more, tunnels over the data
    // path); with the published ports served in its main thread (--lb-threads 0), which is what the main thread's
    // event-loop delay compares; and with every tunnel inside the libp2p mesh (--data-path-port off).
    const variants: (SwarmVariant & { local: boolean })[] = [
      { suffix: '', flags: [], how: `--lb-threads default (${defaultLbThreads()})`, local: true },
      { suffix: '-t0', flags: ['--lb-threads', '0'], how: '--lb-threads 0', local: true },
      { suffix: '-nodp', flags: ['--data-path-port', 'off'], how: '--data-path-port off', local: false },
    ];
    const only = process.env.BENCH_LB_ONLY?.split(',').filter((name) => name !== '');
    for (const variant of variants) {
      const names = [`daemon-local${variant.suffix}`, `daemon-mesh${variant.suffix}`];
      if (only !== undefined && only.length > 0 && !names.some((name) => only.includes(name))) continue;
      const swarm = await startBenchSwarm(dir, variant, httpService(dir, useNginx));
      swarmClusters.push(swarm.cluster);
      const daemon = (name: string) => swarm.cluster.nodes.get(name)!;
      if (variant.local)
        targets.push({
          name: `daemon-local${variant.suffix}`,
          port: swarm.port,
          host: '127.0.0.2',
          pids: [daemon('w1').child.pid!],
          daemons: [daemon('w1').socket],
          note: `swarmd daemon (worker), published port, 3 local tasks, ${variant.how}`,
        });
      targets.push({
        name: `daemon-mesh${variant.suffix}`,
        port: swarm.port,
        host: '127.0.0.1',
        pids: [daemon('m1').child.pid!, daemon('w1').child.pid!],
        daemons: [daemon('m1').socket, daemon('w1').socket],
        note:
          variant.suffix === '-nodp'
            ? `swarmd daemon (manager) -> HTTP/2 tunnel in a libp2p mesh stream (Noise, yamux) -> worker -> task, ${variant.how}`
            : `swarmd daemon (manager) -> native hop over the data path (TLS 1.3, keyed over the mesh) -> worker -> task, ${variant.how}`,
      });
    }

    // BENCH_LB_ONLY=daemon-mesh,swarmd (say): measure only these, with HAProxy always kept for the ratios.
    if (only !== undefined && only.length > 0) {
      const keep = new Set([...only, 'haproxy']);
      targets.splice(0, targets.length, ...targets.filter((t) => keep.has(t.name)));
    }

    say('round-robin check (first line of the body, 3 new connections each):');
    for (const t of targets)
      say(`  ${t.name.padEnd(12)} ${(await Promise.all([0, 1, 2].map(() => get(t.port, t.host)))).join(' | ')}`);

    say(`warm-up ${WARMUP_SECONDS} s each`);
    for (const t of targets) runWrk(mode, t.port, WARMUP_SECONDS, [], t.host);

    const samples = new Map<string, WrkResult[]>(targets.map((t) => [t.name, []]));
    const loopDelays = new Map<string, number[]>(targets.map((t) => [t.name, []]));
    for (let r = 1; r <= ROUNDS; r++) {
      for (const t of targets) {
        const daemons = t.daemons ?? [];
        // Scraping resets the daemons' interval: the one after wrk covers exactly the run.
        await Promise.all(daemons.map(loopDelayP99Ms));
        const result = runWrk(mode, t.port, SECONDS, t.pids, t.host);
        const loopMs = daemons.length === 0 ? undefined : Math.max(...(await Promise.all(daemons.map(loopDelayP99Ms))));
        samples.get(t.name)!.push(result);
        if (loopMs !== undefined) loopDelays.get(t.name)!.push(loopMs);
        say(
          `round ${r} ${t.name.padEnd(12)} ${Math.round(result.rps)} req/s  p50 ${result.p50Ms} ms  p99 ${result.p99Ms} ms` +
            `${result.proxyCpuSeconds === null ? '' : `  proxy CPU ${result.proxyCpuSeconds} s`}` +
            `${loopMs === undefined ? '' : `  main loop delay p99 ${loopMs} ms`}` +
            `${result.errors + result.non2xx > 0 ? `  errors ${result.errors} non-2xx ${result.non2xx}` : ''}`,
        );
      }
    }

    const results: Record<string, Record<string, unknown>> = {};
    for (const t of targets) {
      const list = samples.get(t.name)!;
      const rps = median(list.map((s) => s.rps));
      const cpu = t.pids.length === 0 ? null : round(median(list.map((s) => s.proxyCpuSeconds ?? Number.NaN)));
      results[t.name] = {
        rps: Math.round(rps),
        p50Ms: round(median(list.map((s) => s.p50Ms)), 3),
        p99Ms: round(median(list.map((s) => s.p99Ms)), 3),
        errors: list.reduce((a, s) => a + s.errors + s.non2xx, 0),
        proxyCpuSeconds: cpu,
        proxyCpuUsPerRequest: cpu === null ? null : round((cpu * 1e6) / (rps * SECONDS), 1),
        ...(t.daemons === undefined ? {} : { mainLoopDelayP99Ms: round(median(loopDelays.get(t.name)!), 2) }),
        note: t.note,
      };
    }

    const hap = results.haproxy as { rps: number; p99Ms: number } | undefined;
    // Each round's figure over HAProxy's in the same round, then the median: the VM's speed drifts between rounds
    // (and other work on the machine comes and goes), and a ratio of neighbours cancels most of that.
    const ratio = (name: string, key: 'rps' | 'p99Ms') => {
      const mine = samples.get(name);
      const theirs = samples.get('haproxy');
      if (hap === undefined || mine === undefined || theirs === undefined) return null;
      return round(median(mine.map((s, i) => s[key] / theirs[i]![key])), 3);
    };
    const ratios: Record<string, unknown> = {};
    for (const name of [
      'swarmd',
      'swarmd-2acc',
      'swarmd-js',
      'mesh-hop',
      'daemon-local',
      'daemon-mesh',
      'daemon-local-t0',
      'daemon-mesh-t0',
      'daemon-mesh-nodp',
    ]) {
      ratios[name] = { rpsVsHaproxy: ratio(name, 'rps'), p99VsHaproxy: ratio(name, 'p99Ms') };
    }
    // #8's targets are for what users run: the daemon's published port with its default settings, its tasks local
    // (daemon-local) or on another node (daemon-mesh). The Ingress rows above measure parts of it on their own. The
    // targets are set for keep-alive connections; lb-close has none.
    const goals =
      hap === undefined || mode === 'close'
        ? null
        : {
            localRpsAtLeastHaproxy: (ratio('daemon-local', 'rps') ?? 0) >= 1,
            localP99AtMost1_2xHaproxy: (ratio('daemon-local', 'p99Ms') ?? Number.POSITIVE_INFINITY) <= 1.2,
            meshHopAtLeast60PctHaproxy: (ratio('daemon-mesh', 'rps') ?? 0) >= 0.6,
            judged: { local: 'daemon-local', hop: 'daemon-mesh' },
          };

    say('');
    say(
      'target           req/s   p50 ms   p99 ms  proxy CPU-s  CPU µs/req  loop p99 ms  vs HAProxy req/s, p99 (median of per-round ratios)',
    );
    for (const t of targets) {
      const r = results[t.name]!;
      const rr = ratios[t.name] as { rpsVsHaproxy: number | null; p99VsHaproxy: number | null } | undefined;
      say(
        `${t.name.padEnd(15)} ${String(r.rps).padStart(7)}  ${String(r.p50Ms).padStart(7)}  ${String(r.p99Ms).padStart(7)}` +
          `  ${String(r.proxyCpuSeconds ?? '-').padStart(11)}  ${String(r.proxyCpuUsPerRequest ?? '-').padStart(10)}` +
          `  ${String(r.mainLoopDelayP99Ms ?? '-').padStart(11)}` +
          `  ${rr === undefined ? '' : `${rr.rpsVsHaproxy}x, ${rr.p99VsHaproxy}x`}`,
      );
    }
    say('mesh-hop is a loopback TCP connection between two Node processes standing in for the libp2p stream;');
    say(
      'daemon-mesh is the real hop between two swarmd processes (over the data path; -nodp: inside the libp2p mesh);',
    );
    say('-t0: --lb-threads 0 (ports in the main thread).');
    say("loop p99 ms: the daemons' main event-loop delay during the run (Raft and the API wait that long).");
    if (goals !== null) say(`goals: ${JSON.stringify(goals)}`);

    return {
      bench: mode === 'close' ? 'lb-close' : 'lb',
      mode,
      seconds: SECONDS,
      rounds: ROUNDS,
      wrk: `-t${THREADS} -c${CONNECTIONS} --latency${mode === 'close' ? " -H 'Connection: close'" : ''}`,
      cpus: availableParallelism(),
      backends: useNginx ? 'nginx' : 'node',
      missing,
      results,
      ratios,
      goals,
      meshHop:
        'mesh-hop: loopback TCP between two Node processes; daemon-mesh: the data path (TLS 1.3) between two swarmd daemons; daemon-mesh-nodp: libp2p between them',
    };
  } finally {
    await stopBenchSwarms(dir, swarmClusters);
    for (const s of started.reverse()) await killHard(s);
    rmSync(dir, { recursive: true, force: true });
  }
}
