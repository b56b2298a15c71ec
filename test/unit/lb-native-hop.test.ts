// The native hop dialer (native-hop.ts) against a real data path: the native relay dials a loopback data path port
// that the same relay serves, with a ticket whose key it was given, and the server side answers each hop with status
// 0. What is checked is the dialer's choice between a mux stream, a native hop of its own and the tunnel
// (undefined): the handshake budget per peer, with the dialer's clock set by the test, and the muxes per peer.
import { describe, expect, it } from 'vitest';
import type { FetchTicket } from '../../daemon/lb/data-path.ts';
import {
  MUX_IDLE_MS,
  MUX_RETRY_MS,
  NATIVE_HOP_BURST,
  NATIVE_HOPS_PER_SECOND,
  nativeHopDialer,
} from '../../daemon/lb/native-hop.ts';
import type { Mux, NativeRelay } from '../../daemon/lb/native-relay.ts';
import { encodeRemoteHeader } from '../../daemon/lb/remote.ts';
import { loopbackSockets } from '../helpers/loopback-sockets.ts';
import { relayTicket, relayUnderTest } from '../helpers/native-relay.ts';

const RELAY = relayUnderTest();

const { listen, connectTo } = loopbackSockets();
const HEADER = encodeRemoteHeader({ taskId: 'task-1' });

describe.skipIf(typeof RELAY === 'string')('native hop dialer', () => {
  const relay = RELAY as NativeRelay;

  /**
   * A data path port served by the relay, answering every hop and mux stream with status 0; and tickets for it,
   * saying it serves muxes where `mux`. `refuseMuxes`: the first that many connections are closed unread, as a
   * daemon that predates muxes refuses their magic.
   */
  async function servedDataPath({ mux = false, refuseMuxes = 0, staleFirst = false } = {}) {
    let served = 0;
    let streams = 0;
    let connections = 0;
    const port = await listen((socket) => {
      if (++connections <= refuseMuxes) {
        socket.destroy();
        return;
      }
      relay.accept(
        socket,
        (outcome, parked) => {
          if (outcome.kind === 'ready') served++;
          parked?.drop(0);
        },
        (parked) => {
          streams++;
          parked.drop(0);
        },
      );
    }, true);
    const { identity, key } = relayTicket(relay, 60_000);
    let fetched = 0;
    const fetchTicket = async () => {
      fetched++;
      // A key the server does not have: what a dialer holds after the server restarted.
      if (staleFirst && fetched === 1) {
        const stale = { host: '127.0.0.1', port, identity: 'f'.repeat(32), key: new Uint8Array(32) };
        return { ...stale, relay: true as const, mux: true as const };
      }
      return mux
        ? { host: '127.0.0.1', port, identity, key, relay: true as const, mux: true as const }
        : { host: '127.0.0.1', port, identity, key, relay: true as const };
    };
    return {
      fetchTicket,
      served: () => served,
      streams: () => streams,
      connections: () => connections,
      fetched: () => fetched,
    };
  }

  /** The relay, with every mux it dials kept for the test. */
  function watchedRelay(muxes: Mux[]): NativeRelay {
    return {
      ...relay,
      dialMux: (socket, ticket, thread, onUp, onEnd) =>
        relay.dialMux(
          socket,
          ticket,
          thread,
          (outcome) => {
            if (outcome.kind === 'up') muxes.push(outcome.mux);
            onUp(outcome);
          },
          onEnd,
        ),
    };
  }

  /** A dialer on a clock the test moves (clock.now += ms), and what it logs. */
  function clockedDialer(over: NativeRelay, fetchTicket: FetchTicket) {
    const clock = { now: 1_000_000 };
    const logs: string[] = [];
    const dialer = nativeHopDialer(
      over,
      fetchTicket,
      (line) => logs.push(line),
      () => clock.now,
    );
    return { dialer, logs, clock };
  }

  /** Dials `count` hops, 20 at a time; counts those that were native (then dropped) and those left to the tunnel. */
  async function dialMany(dialer: ReturnType<typeof nativeHopDialer>, peerId: string, count: number) {
    let native = 0;
    let tunnel = 0;
    for (let done = 0; done < count; done += 20) {
      const hops = await Promise.all(
        Array.from({ length: Math.min(20, count - done) }, () =>
          dialer.dial(peerId, HEADER, AbortSignal.timeout(5000)),
        ),
      );
      for (const hop of hops) {
        if (hop === undefined) {
          tunnel++;
          continue;
        }
        expect(hop.status).toBe(0);
        hop.parked.drop();
        native++;
      }
    }
    return { native, tunnel };
  }

  it('carries every connection to a peer that serves muxes as a stream: one mux per relay thread, no budget', async () => {
    const dataPath = await servedDataPath({ mux: true });
    const muxes: Mux[] = [];
    const dialer = nativeHopDialer(watchedRelay(muxes), dataPath.fetchTicket, () => {});
    // Past the handshake budget: streams need no handshake of their own.
    expect(await dialMany(dialer, 'peer-a', NATIVE_HOP_BURST + 100)).toEqual({
      native: NATIVE_HOP_BURST + 100,
      tunnel: 0,
    });
    await expect.poll(() => dataPath.streams()).toBe(NATIVE_HOP_BURST + 100);
    expect(dataPath.served()).toBe(0);
    expect(dataPath.connections()).toBe(relay.threads);
    expect(muxes).toHaveLength(relay.threads);
    expect(dialer.muxes()).toBe(relay.threads);
    // A mux that ends is replaced by the next connection that would use it.
    muxes[0]!.cut();
    await expect.poll(() => muxes[0]!.ended).toBe(true);
    expect(await dialMany(dialer, 'peer-a', 2 * relay.threads)).toEqual({ native: 2 * relay.threads, tunnel: 0 });
    expect(dataPath.connections()).toBe(relay.threads + 1);
  });

  it(`closes a mux with no stream open for ${MUX_IDLE_MS / 60_000} minutes, and not one whose stream is open`, async () => {
    const dataPath = await servedDataPath({ mux: true });
    const muxes: Mux[] = [];
    const { dialer, clock } = clockedDialer(watchedRelay(muxes), dataPath.fetchTicket);
    expect(await dialMany(dialer, 'peer-a', 2 * relay.threads)).toEqual({ native: 2 * relay.threads, tunnel: 0 });
    expect(muxes).toHaveLength(relay.threads);
    // One connection stays: its stream is joined to a client's socket.
    const hop = await dialer.dial('peer-a', HEADER, AbortSignal.timeout(5000));
    const client = await connectTo(await listen(() => {}));
    const { promise: ended, resolve: end } = Promise.withResolvers<void>();
    const relayed = hop?.parked.join(client, undefined, 1000, () => end());
    expect(relayed).toBeDefined();
    clock.now += MUX_IDLE_MS - 1;
    expect(dialer.closeIdleMuxes()).toBe(0);
    clock.now += 1;
    expect(dialer.closeIdleMuxes()).toBe(relay.threads - 1);
    await expect.poll(() => muxes.filter((mux) => mux.ended).length).toBe(relay.threads - 1);
    // Its stream ends: idle from then on, and closed once that has lasted.
    relayed?.cut();
    await ended;
    expect(dialer.closeIdleMuxes()).toBe(0);
    clock.now += MUX_IDLE_MS;
    expect(dialer.closeIdleMuxes()).toBe(1);
    await expect.poll(() => muxes.every((mux) => mux.ended)).toBe(true);
    expect(dialer.muxes()).toBe(0);
    // The next connection opens a new mux.
    expect(await dialMany(dialer, 'peer-a', 1)).toEqual({ native: 1, tunnel: 0 });
    expect(muxes).toHaveLength(relay.threads + 1);
  });

  it('sets up a new mux with a new ticket to a peer that restarted, after MUX_RETRY_MS of native hops', async () => {
    const dataPath = await servedDataPath({ mux: true, staleFirst: true });
    const { dialer, logs, clock } = clockedDialer(relay, dataPath.fetchTicket);
    // The stale key fails the mux, then this connection's own hop: it takes the tunnel, and the ticket is dropped.
    expect(await dialer.dial('peer-a', HEADER, AbortSignal.timeout(5000))).toBeUndefined();
    // A new ticket: native hops of their own while muxes wait.
    expect(await dialMany(dialer, 'peer-a', 3)).toEqual({ native: 3, tunnel: 0 });
    expect(dataPath.fetched()).toBe(2);
    expect(dataPath.streams()).toBe(0);
    clock.now += MUX_RETRY_MS;
    expect(await dialMany(dialer, 'peer-a', 3)).toEqual({ native: 3, tunnel: 0 });
    await expect.poll(() => dataPath.streams()).toBe(3);
    expect(dialer.muxes()).toBeGreaterThan(0);
    expect(logs.filter((line) => line.includes('mux to peer-a'))).toHaveLength(1);
  });

  it('gives a peer whose mux cannot be set up native hops of their own', async () => {
    const dataPath = await servedDataPath({ mux: true, refuseMuxes: relay.threads });
    const logs: string[] = [];
    const dialer = nativeHopDialer(relay, dataPath.fetchTicket, (line) => logs.push(line));
    expect(await dialMany(dialer, 'peer-a', 5)).toEqual({ native: 5, tunnel: 0 });
    await expect.poll(() => dataPath.served()).toBe(5);
    expect(dataPath.streams()).toBe(0);
    expect(logs.some((line) => line.includes('native hops of their own'))).toBe(true);
  });

  it(`gives a peer ${NATIVE_HOP_BURST} native hops at once, then ${NATIVE_HOPS_PER_SECOND} a second; the rest get the tunnel`, async () => {
    const dataPath = await servedDataPath();
    const { dialer, logs, clock } = clockedDialer(relay, dataPath.fetchTicket);
    expect(await dialMany(dialer, 'peer-a', NATIVE_HOP_BURST + 40)).toEqual({ native: NATIVE_HOP_BURST, tunnel: 40 });
    expect(logs.filter((line) => line.includes('go through the tunnel'))).toHaveLength(1);
    expect(logs[0]).toContain('peer-a');
    // Half a second later: half a second's worth again.
    clock.now += 500;
    expect(await dialMany(dialer, 'peer-a', NATIVE_HOPS_PER_SECOND)).toEqual({
      native: NATIVE_HOPS_PER_SECOND / 2,
      tunnel: NATIVE_HOPS_PER_SECOND / 2,
    });
    // Another peer has a budget of its own.
    expect(await dialMany(dialer, 'peer-b', 20)).toEqual({ native: 20, tunnel: 0 });
    // Idle for long: the budget refills to the burst, not beyond.
    clock.now += 3_600_000;
    expect(await dialMany(dialer, 'peer-a', NATIVE_HOP_BURST + 20)).toEqual({ native: NATIVE_HOP_BURST, tunnel: 20 });
    // Every native hop was a real handshake that the server side saw; one ticket was fetched per peer and window.
    await expect.poll(() => dataPath.served()).toBe(NATIVE_HOP_BURST * 2 + NATIVE_HOPS_PER_SECOND / 2 + 20);
    expect(dataPath.fetched()).toBe(3);
    // The log says it once a minute, not per connection.
    expect(logs.filter((line) => line.includes('go through the tunnel'))).toHaveLength(2);
  }, 60_000);
});
