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

/** The addon's report of a set-up: a status byte, SETUP_LEGACY, SETUP_MUX or -errno (see call_setup in relay.c). */
type AddonSetup = (result: number, header: Buffer | undefined, identity: string) => void;
/** The addon's report of a connection's end: bytes each way, and the errno (0: a clean end). */
type AddonDone = (aToB: number, bToA: number, errno: number) => void;

/** What the addon exports (native/relay.c, native/mux.c). */
interface RelayAddon {
  start(threads: number): number;
  relay(fdA: number, fdB: number, lingerMs: number, onDone: AddonDone): object;
  cut(handle: object): void;
  bytes(handle: object, out: Float64Array): void;
  dial(
    fd: number,
    identity: string,
    key: Uint8Array,
    header: Uint8Array,
    onSetup: AddonSetup,
    onDone: AddonDone,
  ): object;
  accept(fd: number, onSetup: AddonSetup, onDone: AddonDone, owner: number): object;
  dialMux(
    fd: number,
    identity: string,
    key: Uint8Array,
    thread: number,
    onSetup: AddonSetup,
    onDone: AddonDone,
  ): object;
  openStream(mux: object, header: Uint8Array, onSetup: AddonSetup, onDone: AddonDone): object;
  serveStreams(
    onStream: (handle: object, header: Buffer, identity: string, owner: number) => AddonDone | undefined,
  ): void;
  join(handle: object, fd: number, status: number, lingerMs: number): void;
  drop(handle: object, status: number): void;
  addKey(identity: string, key: Uint8Array, ttlMs: number): void;
  dataPath(): boolean;
}

/** relay.c's SETUP_LEGACY: the first byte on the data path port was a TLS record, a legacy (HTTP/2) tunnel. */
const SETUP_LEGACY = 256;
/** relay.h's SETUP_MUX: a mux (mux.c) is up. */
const SETUP_MUX = 257;

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

/**
 * A connection between two nodes' data paths (data-path.ts) that the relay has set up: TLS done, the header sent
 * (dialer) or received (server). It waits for JS to join it to a socket or drop it.
 */
export interface ParkedConnection {
  /**
   * Relays between `socket` (the client, or the task) and the other node; `status` (server: the status byte) is
   * sent first, or nothing when undefined. Returns undefined, and leaves the socket alone, when it cannot be
   * handed over (see handOver); the parked connection is then still waiting.
   */
  join(
    socket: Socket,
    status: number | undefined,
    lingerMs: number,
    onDone: (end: RelayEnd) => void,
  ): RelayedConnection | undefined;
  /** Ends it; `status` (server: a refusal) is sent first. */
  drop(status?: number): void;
}

/** How a data path connection's set-up ended. */
export type SetupOutcome =
  /** Dialer: the server's status byte. Server: the remote header (without its length prefix), and the key used. */
  | { kind: 'ready'; status: number; header: Buffer | undefined; identity: string }
  /** Server: the connection is a legacy tunnel (HTTP/2 over TLS, tunnel.ts); the JS socket has all of its bytes. */
  | { kind: 'legacy' }
  /** Server: the connection is a mux; its streams go to accept's onStream. whenEnded: a callback for its end. */
  | { kind: 'mux'; whenEnded(callback: () => void): void }
  | { kind: 'failed'; error: string };

/** A data path connection being set up: cut() makes its set-up fail (a timeout, the client leaving). */
export interface SettingUp {
  cut(): void;
}

/**
 * A mux to another node's data path (native/mux.c): one TLS connection that carries many forwarded connections,
 * each opened with a frame instead of a TCP connection and a handshake of its own.
 */
export interface Mux {
  /** As dial(), over this mux. Only while it has not ended. */
  open(header: Buffer, onSetup: (outcome: SetupOutcome, parked: ParkedConnection | undefined) => void): SettingUp;
  /** Ends it, and every stream on it. */
  cut(): void;
  readonly ended: boolean;
}

export type MuxOutcome = { kind: 'up'; mux: Mux } | { kind: 'failed'; error: string };

export interface NativeRelay {
  /** Relay threads running (shared by the whole process). */
  readonly threads: number;
  /** Takes over a and b, or returns undefined (and leaves them alone) when one of them cannot be handed over. */
  handOver(a: Socket, b: Socket, lingerMs: number, onDone: (end: RelayEnd) => void): RelayedConnection | undefined;
  /** Whether the relay can carry the data path between nodes (TLS), else it is served in JS (tunnel.ts). */
  readonly dataPath: boolean;
  /** A data path ticket's key, good for handshakes with this process for ttlMs. */
  addKey(identity: string, key: Uint8Array, ttlMs: number): void;
  /**
   * Sets up a connected socket to another node's data path with a ticket, sending `header`. The socket is the
   * relay's from then on (closed here). onSetup: 'ready' with the status byte, or 'failed'.
   */
  dial(
    socket: Socket,
    ticket: { identity: string; key: Uint8Array },
    header: Buffer,
    onSetup: (outcome: SetupOutcome, parked: ParkedConnection | undefined) => void,
  ): SettingUp;
  /**
   * Sets up a connection accepted on the data path port, which must be paused and unread. onSetup: 'ready' with
   * the header, 'mux', 'legacy' (the socket is left to JS, untouched), or 'failed'. On all but 'legacy' the socket
   * has been destroyed (the relay holds its own descriptor). A mux's streams go to onStream, each set up with its
   * remote header, to be joined to the task or dropped with a refusal as a native hop; without onStream they are
   * refused.
   */
  accept(
    socket: Socket,
    onSetup: (outcome: SetupOutcome, parked: ParkedConnection | undefined) => void,
    onStream?: StreamHandler,
  ): SettingUp;
  /**
   * Sets up a mux on a connected socket to another node's data path, on relay thread `thread` (modulo their
   * number), where all its streams run. The socket is the relay's from then on. onUp: once, 'up' or 'failed';
   * onEnd: when a mux that was up ends (why, when not cleanly).
   */
  dialMux(
    socket: Socket,
    ticket: { identity: string; key: Uint8Array },
    thread: number,
    onUp: (outcome: MuxOutcome) => void,
    onEnd: (error: string | undefined) => void,
  ): SettingUp;
}

/** Takes a stream a peer opened on a mux: joins it to the task, or drops it with a refusal. */
export type StreamHandler = (parked: ParkedConnection, header: Buffer, identity: string) => void;

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
  // The streams of every mux this thread accepts come here, each with the owner its accept() was given.
  const streamHandlers = new OwnerMap<StreamHandler>();
  addon.serveStreams((handle, header, identity, owner) => {
    const life = handleLife(() => handle);
    const onStream = streamHandlers.get(owner);
    const parked = life.parked();
    if (onStream === undefined) parked.drop(REFUSED_NO_HANDLER);
    else onStream(parked, header, identity);
    return (aToB, bToA, errno) => life.done(aToB, bToA, errno);
  });
  /** A RelayedConnection over a handle the relay moves bytes for; `ended` tells whether its onDone has run. */
  const relayedOver = (handle: object, moved: { aToB: number; bToA: number }, ended: () => boolean) => ({
    bytes() {
      if (!ended()) {
        addon.bytes(handle, counts);
        moved.aToB = counts[0]!;
        moved.bToA = counts[1]!;
      }
      return moved;
    },
    cut() {
      if (!ended()) addon.cut(handle);
    },
  });
  /**
   * What JS does with a relay handle once its set-up is reported: join or drop it (ParkedConnection), then learn
   * its end. `phase` is the handle's state as JS knows it.
   */
  const handleLife = (handle: () => object) => {
    let phase: 'setting-up' | 'parked' | 'joined' | 'ended' = 'setting-up';
    let onEnd: ((end: RelayEnd) => void) | undefined;
    const moved = { aToB: 0, bToA: 0 };
    return {
      phase: () => phase,
      end() {
        phase = 'ended';
      },
      parked(): ParkedConnection {
        phase = 'parked';
        return {
          join(socket, status, lingerMs, onDone) {
            const fd = descriptorOf(socket);
            if (phase !== 'parked' || fd === undefined || !quiet(socket)) return undefined;
            addon.join(handle(), fd, status ?? -1, lingerMs);
            phase = 'joined';
            onEnd = onDone;
            socket.destroy();
            return relayedOver(handle(), moved, () => phase === 'ended');
          },
          drop(status) {
            if (phase !== 'parked') return;
            phase = 'ended';
            addon.drop(handle(), status ?? -1);
          },
        };
      },
      done(aToB: number, bToA: number, errno: number) {
        phase = 'ended';
        moved.aToB = aToB;
        moved.bToA = bToA;
        onEnd?.({ aToB, bToA, error: errno === 0 ? undefined : errnoName(errno) });
      },
    };
  };
  /**
   * The JS side of a data path connection (or a stream JS opens on a mux): its set-up report, then join or drop,
   * then its end.
   */
  const dataPathConnection = (
    start: (onSetup: AddonSetup, onDone: AddonDone) => object,
    onSetup: (outcome: SetupOutcome, parked: ParkedConnection | undefined) => void,
  ): SettingUp => {
    const life = handleLife(() => handle);
    let onMuxEnd: (() => void) | undefined;
    const handle: object = start(
      (result, header, identity) => {
        if (result === SETUP_MUX) {
          // A mux the server side accepted: nothing to join, its streams go to accept's onStream.
          life.end();
          onSetup({ kind: 'mux', whenEnded: (callback) => (onMuxEnd = callback) }, undefined);
          return;
        }
        if (result === SETUP_LEGACY || result < 0) {
          // Nothing to join: the relay lets go of its descriptor.
          life.end();
          addon.drop(handle, -1);
          onSetup(
            result === SETUP_LEGACY ? { kind: 'legacy' } : { kind: 'failed', error: errnoName(-result) },
            undefined,
          );
          return;
        }
        onSetup({ kind: 'ready', status: result, header, identity }, life.parked());
      },
      (aToB, bToA, errno) => {
        life.done(aToB, bToA, errno);
        onMuxEnd?.();
      },
    );
    return {
      cut() {
        if (life.phase() === 'setting-up') addon.cut(handle);
      },
    };
  };
  return {
    threads,
    dataPath: addon.dataPath(),
    addKey: (identity, key, ttlMs) => addon.addKey(identity, key, ttlMs),
    dial(socket, ticket, header, onSetup) {
      const fd = descriptorOf(socket);
      if (fd === undefined) throw new Error('the data path socket has no descriptor');
      const setup = dataPathConnection(
        (setupDone, done) => addon.dial(fd, ticket.identity, ticket.key, header, setupDone, done),
        onSetup,
      );
      // The relay has its own descriptor now.
      socket.destroy();
      return setup;
    },
    accept(socket, onSetup, onStream) {
      const fd = descriptorOf(socket);
      if (fd === undefined) throw new Error('the data path socket has no descriptor');
      const owner = onStream === undefined ? 0 : streamHandlers.add(onStream);
      // Kept until the set-up says whose it is: a legacy tunnel is read from this socket by JS.
      return dataPathConnection(
        (setupDone, done) =>
          addon.accept(
            fd,
            setupDone,
            (aToB, bToA, errno) => {
              // Its streams were all reported before its end (one queue), so none comes for this owner now.
              streamHandlers.remove(owner);
              done(aToB, bToA, errno);
            },
            owner,
          ),
        (outcome, parked) => {
          if (outcome.kind !== 'legacy') socket.destroy();
          if (outcome.kind !== 'mux') streamHandlers.remove(owner);
          onSetup(outcome, parked);
        },
      );
    },
    dialMux(socket, ticket, thread, onUp, onEnd) {
      const fd = descriptorOf(socket);
      if (fd === undefined) throw new Error('the data path socket has no descriptor');
      let state: 'setting-up' | 'up' | 'ended' = 'setting-up';
      const mux: Mux = {
        open(header, onSetup) {
          if (state !== 'up') throw new Error('the mux is not up');
          return dataPathConnection((setupDone, done) => addon.openStream(handle, header, setupDone, done), onSetup);
        },
        cut() {
          if (state !== 'ended') addon.cut(handle);
        },
        get ended() {
          return state === 'ended';
        },
      };
      const handle = addon.dialMux(
        fd,
        ticket.identity,
        ticket.key,
        thread,
        (result) => {
          if (result === SETUP_MUX) {
            state = 'up';
            onUp({ kind: 'up', mux });
            return;
          }
          state = 'ended';
          addon.drop(handle, -1);
          onUp({ kind: 'failed', error: errnoName(-result) });
        },
        (_aToB, _bToA, errno) => {
          const wasUp = state === 'up';
          state = 'ended';
          if (wasUp) onEnd(errno === 0 ? undefined : errnoName(errno));
        },
      );
      // The relay has its own descriptor now.
      socket.destroy();
      return {
        cut() {
          if (state === 'setting-up') addon.cut(handle);
        },
      };
    },
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
      return relayedOver(handle, moved, () => !open);
    },
  };
}

/** remote.ts's REMOTE_STATUS.badHeader: a stream on a mux whose accept() gave no onStream. */
const REFUSED_NO_HANDLER = 1;

/** Values by a small number that add() hands out (1, 2, ...): what crosses into C in place of a function. */
class OwnerMap<T> {
  private readonly values = new Map<number, T>();
  private next = 1;

  add(value: T): number {
    const id = this.next++;
    this.values.set(id, value);
    return id;
  }

  get(id: number): T | undefined {
    return this.values.get(id);
  }

  remove(id: number): void {
    this.values.delete(id);
  }
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
