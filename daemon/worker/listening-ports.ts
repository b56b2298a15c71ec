// The TCP ports programs on this host listen on, and the UDP ports they have bound, so the managers can refuse to
// publish a port the host already uses (every node's ingress would fail to listen on it) and name who holds it.
// Read from /proc/net/{tcp,tcp6,udp,udp6} (no `ss`, no root), every SCAN_MS, and reported in the node description
// only when the set changes.
//
// Left out, because they are no conflict anyone can act on:
// - ports in the kernel's ephemeral range (ip_local_port_range): outgoing connections and the host ports tasks are
//   given ($PORT, taken by binding port 0) come from there; they come and go, and would rewrite the node's
//   description with every task start. Publishing in that range is unusual (Docker picks 30000-32767 itself).
// - the ports this swarmd listens on for published services (the caller passes them): those belong to services,
//   whose conflicts the managers already see.
// - listeners on another address than the ingress's (--ingress-host), which do not keep it from listening.
//
// The owning program is named where this process may look (its own processes; all of them as root): a socket's
// inode is matched against /proc/PID/fd links, once per new listening socket, with a bound on the work.
import { createReadStream } from 'node:fs';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { isDeepStrictEqual } from 'node:util';
import { portLabel } from '../api/services.ts';
import type { HostPortInUse } from '../api/types.ts';

/** How often the ports are read again. */
export const SCAN_MS = 10_000;
/** At most this many processes are looked through per scan to name new listeners. */
const MAX_PROCESSES_SEARCHED = 4096;
/** The state column of a listening TCP socket, and of a bound but unconnected UDP one (TCP_CLOSE, "07"). */
const LISTEN_STATE = '0A';
const UDP_BOUND_STATE = '07';

export interface ListeningSocket {
  /** Dotted IPv4, '0.0.0.0' or '::' for every address, or 'ipv6' for one IPv6 address. */
  address: string;
  port: number;
  inode: number;
}

/** The listening sockets in (whole lines of) the text of /proc/net/tcp or /proc/net/tcp6. */
export function parseProcNetTcp(text: string, into: ListeningSocket[] = []): ListeningSocket[] {
  return parseProcNet(text, LISTEN_STATE, into);
}

/** The bound, unconnected sockets (servers) in the text of /proc/net/udp or /proc/net/udp6: same columns as tcp. */
export function parseProcNetUdp(text: string, into: ListeningSocket[] = []): ListeningSocket[] {
  return parseProcNet(text, UDP_BOUND_STATE, into);
}

function parseProcNet(text: string, state: string, into: ListeningSocket[]): ListeningSocket[] {
  parseLines(text, state, into);
  return into;
}

/** Adds the sockets in `state` found in whole lines of `text`; returns whether a line in another state was seen. */
function parseLines(text: string, state: string, into: ListeningSocket[]): boolean {
  let sawOtherState = false;
  for (const line of text.split('\n')) {
    // Only the state column can read " 0A " or " 07 ": the others are hex without spaces or decimal numbers.
    if (!line.includes(` ${state} `)) {
      // Every socket line starts with its slot number and a colon; the header and blank lines do not.
      if (/^\s*\d+:/.test(line)) sawOtherState = true;
      continue;
    }
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10 || fields[3] !== state) {
      sawOtherState = true;
      continue;
    }
    const [hexAddress = '', hexPort = ''] = fields[1]!.split(':');
    const port = Number.parseInt(hexPort, 16);
    const inode = Number(fields[9]);
    if (!Number.isInteger(port) || port <= 0 || port > 65535 || !Number.isInteger(inode)) continue;
    into.push({ address: decodeAddress(hexAddress), port, inode });
  }
  return sawOtherState;
}

/**
 * The listening sockets of one of those files, read in chunks: a node with many connections has megabytes of
 * lines there, which parsed at once would hold the event loop for tens of milliseconds.
 *
 * TCP: the kernel prints every listening socket first (its seq_file walks the listening hash, then the established
 * one: tcp_seq_start and tcp_seq_next in net/ipv4/tcp_ipv4.c), so reading stops at the first socket in another
 * state. A busy ingress has hundreds of thousands of connections and TIME_WAIT sockets there (67,000 lines, 10 MB,
 * in a run of the lb-close bench); walking them every SCAN_MS cost the kernel and this event loop for nothing.
 * UDP has no such order (one table for every socket) and is read whole.
 */
export async function readListeningSockets(path: string, protocol: 'tcp' | 'udp' = 'tcp'): Promise<ListeningSocket[]> {
  const state = protocol === 'udp' ? UDP_BOUND_STATE : LISTEN_STATE;
  const stopAtOtherState = protocol === 'tcp';
  const sockets: ListeningSocket[] = [];
  let partial = '';
  try {
    for await (const chunk of createReadStream(path, { encoding: 'utf8', highWaterMark: 64 * 1024 })) {
      const text = partial + (chunk as string);
      const end = text.lastIndexOf('\n');
      partial = text.slice(end + 1);
      // Leaving the loop closes the file: the kernel walks no further.
      if (parseLines(text.slice(0, end + 1), state, sockets) && stopAtOtherState) return sockets;
    }
  } catch {
    return sockets; // unreadable (no /proc, no IPv6): what was read so far
  }
  parseLines(partial, state, sockets);
  return sockets;
}

/** The kernel prints an IPv4 address as one little-endian 32-bit word in hex, an IPv6 one as four of them. */
function decodeAddress(hex: string): string {
  if (hex.length === 8) {
    const word = Number.parseInt(hex, 16);
    return [word & 255, (word >>> 8) & 255, (word >>> 16) & 255, word >>> 24].join('.');
  }
  return /^0+$/.test(hex) ? '::' : 'ipv6';
}

/** Whether a listener there keeps an ingress bound to bindHost (undefined: every address) from listening. */
export function blocksIngress(socket: ListeningSocket, bindHost: string | undefined): boolean {
  if (bindHost === undefined || socket.address === '0.0.0.0' || socket.address === '::') return true;
  return socket.address === bindHost;
}

/** The kernel's ephemeral port range; Linux's default when it cannot be read. */
export function parsePortRange(text: string | undefined): [number, number] {
  const [low, high] = (text ?? '').trim().split(/\s+/).map(Number);
  if (low !== undefined && high !== undefined && low > 0 && high >= low && high <= 65535) return [low, high];
  return [32768, 60999];
}

export interface ListeningPortsOptions {
  /** Ports to leave out, as "8080/tcp" or "53/udp": those this swarmd's ingress listens on. */
  exclude: () => Iterable<string>;
  /** The address the ingress listens on (--ingress-host); left out, every address. */
  bindHost?: string;
  /** Called when the reported set changes (to send a heartbeat soon). */
  onChange?: () => void;
  procRoot?: string;
}

export class ListeningPorts {
  private readonly opts: ListeningPortsOptions;
  private readonly proc: string;
  private ports: HostPortInUse[] = [];
  /** Socket inode -> "name (pid N)" or '' when no process we could see holds it. */
  private readonly owners = new Map<number, string>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private scanning: Promise<void> | undefined;

  constructor(opts: ListeningPortsOptions) {
    this.opts = opts;
    this.proc = opts.procRoot ?? '/proc';
  }

  /** The ports as of the last scan, sorted. */
  current(): HostPortInUse[] {
    return this.ports;
  }

  /** Scans now, then every SCAN_MS until stopped. */
  async start(): Promise<void> {
    await this.scan();
    const tick = () => {
      if (this.stopped) return;
      this.timer = setTimeout(() => void this.scan().finally(tick), SCAN_MS);
      this.timer.unref();
    };
    tick();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** One scan; concurrent callers share it. Never throws: an unreadable /proc reports no ports. */
  scan(): Promise<void> {
    this.scanning ??= this.scanOnce()
      .catch(() => undefined)
      .finally(() => {
        this.scanning = undefined;
      });
    return this.scanning;
  }

  private async scanOnce(): Promise<void> {
    const [tcp, tcp6, udp, udp6, range] = await Promise.all([
      readListeningSockets(`${this.proc}/net/tcp`),
      readListeningSockets(`${this.proc}/net/tcp6`),
      readListeningSockets(`${this.proc}/net/udp`, 'udp'),
      readListeningSockets(`${this.proc}/net/udp6`, 'udp'),
      readFile(`${this.proc}/sys/net/ipv4/ip_local_port_range`, 'utf8').catch(() => undefined),
    ]);
    const [low, high] = parsePortRange(range);
    const excluded = new Set(this.opts.exclude());
    /** By "8080/tcp" (the form exclude() names them in): the port and the inodes of the sockets holding it. */
    const held = new Map<string, { port: number; protocol: 'tcp' | 'udp'; inodes: number[] }>();
    const sockets = [
      ...[...tcp, ...tcp6].map((socket) => ({ socket, protocol: 'tcp' as const })),
      ...[...udp, ...udp6].map((socket) => ({ socket, protocol: 'udp' as const })),
    ];
    for (const { socket, protocol } of sockets) {
      const label = portLabel({ published: socket.port, protocol });
      if ((socket.port >= low && socket.port <= high) || excluded.has(label)) continue;
      if (!blocksIngress(socket, this.opts.bindHost)) continue;
      const entry = held.get(label);
      if (entry) entry.inodes.push(socket.inode);
      else held.set(label, { port: socket.port, protocol, inodes: [socket.inode] });
    }
    const inodes = new Set([...held.values()].flatMap((entry) => entry.inodes));
    for (const inode of this.owners.keys()) if (!inodes.has(inode)) this.owners.delete(inode);
    const unknown = [...inodes].filter((inode) => inode !== 0 && !this.owners.has(inode));
    if (unknown.length > 0) await this.findOwners(new Set(unknown));
    const ports: HostPortInUse[] = [...held.values()]
      .map(({ port, protocol, inodes: ids }) => {
        const owner = ids.map((id) => this.owners.get(id)).find(Boolean);
        return {
          port,
          ...(protocol === 'udp' ? { protocol: 'udp' as const } : {}),
          ...(owner ? { process: owner } : {}),
        };
      })
      .sort((a, b) => a.port - b.port || (a.protocol ?? '').localeCompare(b.protocol ?? ''));
    const changed = !isDeepStrictEqual(ports, this.ports);
    this.ports = ports;
    if (changed) this.opts.onChange?.();
  }

  /** Looks through /proc/PID/fd for the sockets; what is not found (another user's process) stays unnamed. */
  private async findOwners(inodes: Set<number>): Promise<void> {
    const pids = (await readdir(this.proc).catch(() => [] as string[])).filter((name) => /^\d+$/.test(name));
    let left = inodes.size;
    for (const pid of pids.slice(0, MAX_PROCESSES_SEARCHED)) {
      if (left === 0) break;
      const fds = await readdir(`${this.proc}/${pid}/fd`).catch(() => [] as string[]);
      const links = await Promise.all(fds.map((fd) => readlink(`${this.proc}/${pid}/fd/${fd}`).catch(() => '')));
      for (const link of links) {
        const inode = Number(/^socket:\[(\d+)\]$/.exec(link)?.[1]);
        if (!inodes.has(inode) || this.owners.has(inode)) continue;
        const comm = (await readFile(`${this.proc}/${pid}/comm`, 'utf8').catch(() => '')).trim();
        const name = Number(pid) === process.pid ? 'swarmd' : comm || 'a process';
        this.owners.set(inode, `${name} (pid ${pid})`);
        left--;
      }
    }
    for (const inode of inodes) if (!this.owners.has(inode)) this.owners.set(inode, '');
  }
}
