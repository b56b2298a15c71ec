// `swarmd`: runs a node of the swarm in the foreground.
//   swarmd init [--data-dir DIR] [--listen-addr HOST:PORT] [--advertise-addr HOST:PORT] [--mesh-encryption noise|tls]
//   swarmd join --token TOKEN HOST:PORT [same flags]
//   swarmd run [--data-dir DIR]
//   swarmd leave [--force]
import { isIP } from 'node:net';
import { homedir, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ApiClient } from '../daemon/api/client.ts';
import { SWARMD_VERSION } from '../daemon/api/version.ts';
import { MAX_LB_THREADS } from '../daemon/lb/ingress-threads.ts';
import { nativeRelay, type RelayMode } from '../daemon/lb/native-relay.ts';
import { JoinTokenError } from '../daemon/mesh/pki.ts';
import { type HostPort, Swarmd, SwarmdError } from '../daemon/swarmd.ts';
import { parseNodeResources } from '../daemon/worker/accelerators/node-resources.ts';

const USAGE = `Usage: swarmd COMMAND [OPTIONS]

Runs a node of a swarm in the foreground.

Commands:
  init    Start a new swarm with this node as its first manager
  join    Join a swarm as a worker or manager: swarmd join --token TOKEN HOST:PORT
  run     Start this node again from its data dir
  leave   Make the running node leave its swarm
  version Show the version (also --version)

Options:
  --data-dir DIR                 State directory (default $SWARMD_DATA_DIR or ~/.swarmd)
  --listen-addr HOST:PORT        Mesh listen address (default 0.0.0.0:2377)
  --advertise-addr HOST:PORT     Address other nodes should use to reach this one
  --mesh-encryption noise|tls    Encryption between nodes (default noise; tls = TLS 1.3)
  --token TOKEN                  Join token (join)
  --heartbeat-period SECONDS     How often nodes report to the leader (init; default 1)
  --node-down-after SECONDS      Missed-heartbeat time before a node is marked down (init; default 4)
  --cert-expiry SECONDS          Lifetime of membership certificates, renewed at half life (init; default 90 days)
  --node-resource KIND=N|ID      Declare a resource discovery does not see (fpga=2, ib=mlx5_0); repeatable
  --apptainer PATH               The apptainer or singularity binary (default: whichever is on PATH)
  --ingress-host HOST            Address published ports listen on (default: all interfaces)
  --lb-threads N                 Threads serving published ports, ~17 MiB each (default: one per CPU, up
                                 to 4; 0, the daemon's main thread, on one CPU or under 2 GiB of memory)
  --lb-relay auto|native|js      How forwarded connections to local tasks move their bytes: native, in C
                                 threads (built at setup with the system's C compiler), or js, in the event
                                 loop (default auto: native where it is built)
  --data-path-port PORT|off      Port of the load balancer's data path: direct TLS 1.3 connections between
                                 nodes, keyed over the mesh, on the listen address (default 0: any free
                                 port; off: all forwarded connections go through the mesh)
  --force                        leave: even if this node is a manager
  --force-new-cluster            run: on a manager of a swarm that lost its quorum for good, start as its
                                 only manager with the state this node has; the other managers become workers
  -h, --help                     Show this help
`;

class UsageError extends Error {}

function parseDataPathPort(value: string): number | 'off' {
  if (value === 'off') return 'off';
  const port = /^\d{1,5}$/.test(value) ? Number(value) : Number.NaN;
  if (!(port >= 0 && port <= 65535)) {
    throw new UsageError(`--data-path-port must be a port from 0 to 65535 or "off", got "${value}"`);
  }
  return port;
}

function parseLbRelay(value: string): RelayMode | 'auto' {
  if (value !== 'auto' && value !== 'native' && value !== 'js') {
    throw new UsageError(`--lb-relay must be auto, native or js, got "${value}"`);
  }
  // Said before anything starts (init would otherwise have made a swarm it then cannot serve).
  const relay = value === 'native' ? nativeRelay() : undefined;
  if (typeof relay === 'string') throw new UsageError(`--lb-relay native: ${relay}`);
  return value;
}

function parseLbThreads(value: string): number {
  const threads = /^\d{1,3}$/.test(value) ? Number(value) : Number.NaN;
  if (!(threads >= 0 && threads <= MAX_LB_THREADS)) {
    throw new UsageError(`--lb-threads must be a whole number from 0 to ${MAX_LB_THREADS}, got "${value}"`);
  }
  return threads;
}

/** HOST:PORT; port 0 (any free port) only where anyPort allows it, i.e. for listening. */
function parseHostPort(flag: string, value: string, anyPort = false): HostPort {
  const match = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(value);
  const port = match ? Number(match[2]) : Number.NaN;
  const min = anyPort ? 0 : 1;
  if (!match || port < min || port > 65535) {
    throw new UsageError(`${flag} must be HOST:PORT with a port from ${min} to 65535, got "${value}"`);
  }
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
}

function parseSeconds(flag: string, value: string | undefined, max = 3600): number | undefined {
  if (value === undefined) return undefined;
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > max) {
    throw new UsageError(`${flag} must be a number of seconds between 0 and ${max}, got "${value}"`);
  }
  return Math.round(seconds * 1000);
}

/** The address to print in join instructions: the advertised one, or a real interface for 0.0.0.0. */
function joinAddress(listen: HostPort, advertise: HostPort | null): string {
  if (advertise) return `${advertise.host}:${advertise.port}`;
  if (listen.host !== '0.0.0.0' && listen.host !== '::') return `${listen.host}:${listen.port}`;
  for (const addrs of Object.values(networkInterfaces())) {
    const v4 = addrs?.find((a) => a.family === 'IPv4' && !a.internal);
    if (v4) return `${v4.address}:${listen.port}`;
  }
  return `127.0.0.1:${listen.port}`;
}

async function runForeground(daemon: Swarmd): Promise<number> {
  const stop = () => void daemon.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await daemon.stopped;
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return command ? 0 : 2;
  }
  if (command === '--version' || command === 'version') {
    process.stdout.write(`swarmd ${SWARMD_VERSION}\n`);
    return 0;
  }
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    strict: true,
    options: {
      'data-dir': { type: 'string' },
      'listen-addr': { type: 'string' },
      'advertise-addr': { type: 'string' },
      'mesh-encryption': { type: 'string' },
      token: { type: 'string' },
      'heartbeat-period': { type: 'string' },
      'node-down-after': { type: 'string' },
      'cert-expiry': { type: 'string' },
      'node-resource': { type: 'string', multiple: true },
      apptainer: { type: 'string' },
      'ingress-host': { type: 'string' },
      'lb-threads': { type: 'string' },
      'lb-relay': { type: 'string' },
      'data-path-port': { type: 'string' },
      force: { type: 'boolean' },
      'force-new-cluster': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const dataDir = values['data-dir'] ?? process.env.SWARMD_DATA_DIR ?? join(homedir(), '.swarmd');
  const encryptionFlag = values['mesh-encryption'];
  if (encryptionFlag !== undefined && encryptionFlag !== 'noise' && encryptionFlag !== 'tls') {
    throw new UsageError(`--mesh-encryption must be noise or tls, got "${encryptionFlag}"`);
  }
  const encryption: 'noise' | 'tls' | undefined = encryptionFlag;
  const listen = values['listen-addr'] ? parseHostPort('--listen-addr', values['listen-addr'], true) : undefined;
  const advertise = values['advertise-addr'] ? parseHostPort('--advertise-addr', values['advertise-addr']) : undefined;
  let nodeResources: { kind: string; ids: string[] }[] = [];
  try {
    nodeResources = parseNodeResources(values['node-resource'] ?? []);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const common = {
    dataDir,
    ...(nodeResources.length > 0 ? { nodeResources } : {}),
    ...(values.apptainer ? { apptainerBinary: values.apptainer } : {}),
    ...(values['ingress-host'] ? { ingressHost: checkIngressHost(values['ingress-host']) } : {}),
    ...(values['lb-threads'] === undefined ? {} : { lbThreads: parseLbThreads(values['lb-threads']) }),
    ...(values['lb-relay'] === undefined ? {} : { lbRelay: parseLbRelay(values['lb-relay']) }),
    ...(values['data-path-port'] === undefined ? {} : { dataPathPort: parseDataPathPort(values['data-path-port']) }),
    ...(listen ? { listen } : {}),
    ...(advertise ? { advertise } : {}),
    ...(encryption ? { meshEncryption: encryption } : {}),
    log: (level: string, message: string) => {
      process.stderr.write(`${new Date().toISOString()} ${level} ${message}\n`);
    },
  };
  if (values['force-new-cluster'] && command !== 'run') {
    throw new UsageError('--force-new-cluster applies to swarmd run (a manager starting again from its data dir)');
  }
  switch (command) {
    case 'init': {
      if (positionals.length > 0) throw new UsageError(`init takes no arguments, got "${positionals[0]}"`);
      const heartbeatPeriodMs = parseSeconds('--heartbeat-period', values['heartbeat-period']);
      const nodeDownAfterMs = parseSeconds('--node-down-after', values['node-down-after']);
      const certTtlMs = parseSeconds('--cert-expiry', values['cert-expiry'], 10 * 365 * 86400);
      if (certTtlMs !== undefined && certTtlMs < 10_000)
        throw new UsageError('--cert-expiry must be at least 10 seconds');
      if (heartbeatPeriodMs && nodeDownAfterMs && nodeDownAfterMs <= heartbeatPeriodMs) {
        throw new UsageError('--node-down-after must be longer than --heartbeat-period');
      }
      const daemon = await Swarmd.init(common, {
        ...(heartbeatPeriodMs ? { heartbeatPeriodMs } : {}),
        ...(nodeDownAfterMs ? { nodeDownAfterMs } : {}),
        ...(certTtlMs ? { certTtlMs } : {}),
      });
      const tokens = await new ApiClient(daemon.socketPath).joinTokens();
      const listening = listen ?? { host: '0.0.0.0', port: 2377 };
      // With --listen-addr HOST:0 the kernel picks the port: print the one it picked.
      const address = joinAddress({ ...listening, port: daemon.meshPort ?? listening.port }, advertise ?? null);
      process.stdout.write(
        `Swarm initialized: current node (${daemon.nodeId}) is now a manager.\n\n` +
          `To add a worker to this swarm, run the following command:\n\n` +
          `    swarmd join --token ${tokens.worker} ${address}\n\n` +
          `To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n`,
      );
      return runForeground(daemon);
    }
    case 'join': {
      if (!values.token) throw new UsageError('join needs --token TOKEN (from `swarm join-token worker` on a manager)');
      if (positionals.length !== 1)
        throw new UsageError('join needs the address of a manager: swarmd join --token TOKEN HOST:PORT');
      const remote = parseHostPort('manager address', positionals[0]!);
      const daemon = await Swarmd.join({ ...common, token: values.token, remote });
      const info = await new ApiClient(daemon.socketPath).info();
      process.stdout.write(`This node joined a swarm as a ${info.role} (node ${info.nodeId}).\n`);
      return runForeground(daemon);
    }
    case 'run': {
      if (positionals.length > 0) throw new UsageError(`run takes no arguments, got "${positionals[0]}"`);
      const daemon = await Swarmd.run({ ...common, ...(values['force-new-cluster'] ? { forceNewCluster: true } : {}) });
      return runForeground(daemon);
    }
    case 'leave': {
      await new ApiClient(join(dataDir, 'swarmd.sock')).leave(values.force ?? false);
      process.stdout.write('Node left the swarm.\n');
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}" (see swarmd --help)`);
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      const usage = error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
      const known =
        usage ||
        error instanceof SwarmdError ||
        error instanceof JoinTokenError ||
        (error as Error).name.endsWith('Error');
      const message = error instanceof Error ? error.message : String(error);
      process.stderr.write(`swarmd: ${known ? message : `unexpected error: ${message}`}\n`);
      process.exit(usage ? 2 : 1);
    },
  );
}

/** An IP address to listen on (a name would resolve differently over time; say so now rather than at first use). */
function checkIngressHost(host: string): string {
  if (isIP(host) === 0) throw new UsageError(`--ingress-host must be an IP address, got "${host}"`);
  return host;
}
