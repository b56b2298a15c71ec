// The native hop dialer (native-hop.ts) against a real data path: the native relay dials a loopback data path port
// that the same relay serves, with a ticket whose key it was given, and the server side answers each hop with status
// 0. What is checked is the dialer's choice between a native hop and the tunnel (undefined): the handshake budget
// per peer, with the dialer's clock set by the test.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { NATIVE_HOP_BURST, NATIVE_HOPS_PER_SECOND, nativeHopDialer } from '../../daemon/lb/native-hop.ts';
import { type NativeRelay, nativeRelay } from '../../daemon/lb/native-relay.ts';
import { encodeRemoteHeader } from '../../daemon/lb/remote.ts';
import { loopbackSockets } from '../helpers/loopback-sockets.ts';

const RELAY = nativeRelay();
if (typeof RELAY === 'string' && process.env.CI) throw new Error(`CI needs the native relay: ${RELAY}`);

const { listen } = loopbackSockets();
const HEADER = encodeRemoteHeader({ taskId: 'task-1' });

describe.skipIf(typeof RELAY === 'string')('native hop dialer', () => {
  const relay = RELAY as NativeRelay;

  /** A data path port served by the relay, answering every hop with status 0; and tickets for it. */
  async function servedDataPath() {
    let served = 0;
    const port = await listen(
      (socket) =>
        relay.accept(socket, (outcome, parked) => {
          if (outcome.kind === 'ready') served++;
          parked?.drop(0);
        }),
      true,
    );
    const identity = randomBytes(16).toString('hex');
    const key = randomBytes(32);
    relay.addKey(identity, key, 60_000);
    let fetched = 0;
    const fetchTicket = async () => {
      fetched++;
      return { host: '127.0.0.1', port, identity, key, relay: true as const };
    };
    return { fetchTicket, served: () => served, fetched: () => fetched };
  }

  it(`gives a peer ${NATIVE_HOP_BURST} native hops at once, then ${NATIVE_HOPS_PER_SECOND} a second; the rest get the tunnel`, async () => {
    const dataPath = await servedDataPath();
    let clock = 1_000_000;
    const logs: string[] = [];
    const dialer = nativeHopDialer(
      relay,
      dataPath.fetchTicket,
      (line) => logs.push(line),
      () => clock,
    );
    const dialMany = async (peerId: string, count: number) => {
      let native = 0;
      let tunnel = 0;
      // 20 at a time: a burst of connections, as a client pool opens them.
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
    };

    expect(await dialMany('peer-a', NATIVE_HOP_BURST + 40)).toEqual({ native: NATIVE_HOP_BURST, tunnel: 40 });
    expect(logs.filter((line) => line.includes('go through the tunnel'))).toHaveLength(1);
    expect(logs[0]).toContain('peer-a');
    // Half a second later: half a second's worth again.
    clock += 500;
    expect(await dialMany('peer-a', NATIVE_HOPS_PER_SECOND)).toEqual({
      native: NATIVE_HOPS_PER_SECOND / 2,
      tunnel: NATIVE_HOPS_PER_SECOND / 2,
    });
    // Another peer has a budget of its own.
    expect(await dialMany('peer-b', 20)).toEqual({ native: 20, tunnel: 0 });
    // Idle for long: the budget refills to the burst, not beyond.
    clock += 3_600_000;
    expect(await dialMany('peer-a', NATIVE_HOP_BURST + 20)).toEqual({ native: NATIVE_HOP_BURST, tunnel: 20 });
    // Every native hop was a real handshake that the server side saw; one ticket was fetched per peer and window.
    await expect.poll(() => dataPath.served()).toBe(NATIVE_HOP_BURST * 2 + NATIVE_HOPS_PER_SECOND / 2 + 20);
    expect(dataPath.fetched()).toBe(3);
    // The log says it once a minute, not per connection.
    expect(logs.filter((line) => line.includes('go through the tunnel'))).toHaveLength(2);
  }, 60_000);
});
