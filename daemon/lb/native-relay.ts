// The native relay (native/relay.c) from JavaScript: hands two connected TCP sockets to it, after which their bytes
// move in its threads, not in this event loop. Where the addon is not built (no C compiler when the repo was set
// up, or not Linux), nativeRelay() says why, and forwarder.ts moves the bytes with pump.ts instead.
//
// Handing over: the relay duplicates both descriptors, then the JS sockets are destroyed, which closes only their
// own descriptors (close(2), no shutdown), so the connection lives on in the relay. That is only safe for a socket
// with nothing of its own in flight: nothing read that was not forwarded yet, nothing written that is still
// queued. handOver() checks both and refuses otherwise (pump.ts then does the job).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { getSystemErrorName } from 'node:util';
import { hasUnforwardedReads } from './pump.ts';

/** How the TCP ingress moves a connection's bytes once it is connected to a task. */
export type RelayMode = 'native' | 'js';

/** What the addon exports (native/relay.c). */
interface RelayAddon {
  start(threads: number): number;
  relay(
    fdA: number,
    fdB: number,
    lingerMs: number,
    onDone: (aToB: number, bToA: number, errno: number) => void,
  ): object;
  cut(handle: object): void;
  bytes(handle: object, out: Float64Array): void;
}

/** A connection the relay holds. */
export interface RelayedConnection {
  /** Bytes moved so far: client to task, task to client. */
  bytes(): { aToB: number; bToA: number };
  /** Ends it now; onDone follows. */
  cut(): void;
}

export interface RelayEnd {
  aToB: number;
  bToA: number;
  /** Why it ended, when not cleanly (its errno as text, as Node names socket errors). */
  error: string | undefined;
}

export interface NativeRelay {
  /** Relay threads running (shared by the whole process). */
  readonly threads: number;
  /** Takes over a and b, or returns undefined (and leaves them alone) when one of them cannot be handed over. */
  handOver(a: Socket, b: Socket, lingerMs: number, onDone: (end: RelayEnd) => void): RelayedConnection | undefined;
}

/** Where `npm run build:native` puts the addon, and where the bundle (cli/build.ts) copies it: next to its modules. */
const ADDON_PATHS = [
  fileURLToPath(new URL('./native/build/relay.node', import.meta.url)),
  fileURLToPath(new URL('./relay.node', import.meta.url)),
];

let loaded: { relay: NativeRelay } | { failure: string } | undefined;

/** The native relay of this process (and thread), or why there is none. Loaded once. */
export function nativeRelay(): NativeRelay | string {
  loaded ??= load();
  return 'relay' in loaded ? loaded.relay : loaded.failure;
}

/**
 * The daemon's choice (--lb-relay): auto takes the native relay where it loads and says which it took; native
 * insists on it (an error naming why it cannot load); js never uses it.
 */
export function chooseRelayMode(wanted: RelayMode | 'auto', log: (message: string) => void): RelayMode {
  if (wanted === 'js') return 'js';
  const relay = nativeRelay();
  if (typeof relay === 'string') {
    if (wanted === 'native') throw new Error(`--lb-relay native: ${relay}`);
    log(`lb: moving forwarded bytes in JavaScript: ${relay}`);
    return 'js';
  }
  log(`lb: moving forwarded bytes in the native relay (${relay.threads} threads)`);
  return 'native';
}

function load(): { relay: NativeRelay } | { failure: string } {
  if (process.platform !== 'linux') return { failure: `the native relay is for Linux (this is ${process.platform})` };
  const path = ADDON_PATHS.find((candidate) => existsSync(candidate));
  if (path === undefined) return { failure: 'the native relay is not built (npm run build:native)' };
  let addon: RelayAddon;
  let threads: number;
  try {
    addon = createRequire(import.meta.url)(path) as RelayAddon;
    // One relay thread per CPU, as HAProxy's nbthread: the relay is where a busy ingress spends its CPU.
    threads = addon.start(availableParallelism());
  } catch (err) {
    return { failure: `the native relay at ${path} cannot be loaded: ${(err as Error).message}` };
  }
  return { relay: relayWith(addon, threads) };
}

function relayWith(addon: RelayAddon, threads: number): NativeRelay {
  const counts = new Float64Array(2);
  return {
    threads,
    handOver(a, b, lingerMs, onDone) {
      const fdA = descriptorOf(a);
      const fdB = descriptorOf(b);
      if (fdA === undefined || fdB === undefined || !quiet(a) || !quiet(b)) return undefined;
      let open = true;
      const moved = { aToB: 0, bToA: 0 };
      const handle = addon.relay(fdA, fdB, lingerMs, (aToB, bToA, errno) => {
        open = false;
        moved.aToB = aToB;
        moved.bToA = bToA;
        onDone({ aToB, bToA, error: errno === 0 ? undefined : errnoName(errno) });
      });
      // Their descriptors are duplicated: closing these leaves the connection to the relay.
      a.destroy();
      b.destroy();
      return {
        bytes() {
          if (open) {
            addon.bytes(handle, counts);
            moved.aToB = counts[0]!;
            moved.bToA = counts[1]!;
          }
          return moved;
        },
        cut() {
          if (open) addon.cut(handle);
        },
      };
    },
  };
}

/** The socket's file descriptor, where Node has one (TCP and pipe handles on Unix). */
function descriptorOf(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** Nothing queued to write and nothing read but not forwarded: the descriptor carries the whole connection. */
function quiet(socket: Socket): boolean {
  return (
    !socket.destroyed &&
    socket.writableLength === 0 &&
    socket.readableLength === 0 &&
    !socket.readableEnded &&
    !socket.writableEnded &&
    !hasUnforwardedReads(socket)
  );
}

/** ECONNRESET and the like, as Node names socket errors. */
function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `errno ${errno}`;
  }
}
