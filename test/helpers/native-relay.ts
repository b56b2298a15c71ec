// What the native relay's suites share: the relay itself (required in CI, where a missing addon must fail the
// suites rather than skip them), data path tickets it holds the keys of, and a transfer both ways at once.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { type NativeRelay, nativeRelay } from '../../daemon/lb/native-relay.ts';
import { receiveAll } from './loopback-sockets.ts';

/** The process's native relay, or why there is none (the suites then skip, outside CI only). */
export function relayUnderTest(): NativeRelay | string {
  const relay = nativeRelay();
  if (typeof relay === 'string' && process.env.CI) throw new Error(`CI needs the native relay: ${relay}`);
  return relay;
}

/** A ticket whose key the relay accepts for handshakes until ttlMs from now. */
export function relayTicket(relay: NativeRelay, ttlMs = 30_000): { identity: string; key: Uint8Array } {
  const identity = randomBytes(16).toString('hex');
  const key = randomBytes(32);
  relay.addKey(identity, key, ttlMs);
  return { identity, key };
}

/** Sends `bytes` random bytes each way at once, each side ending after them; resolves with what each side got. */
export async function sendBothWays(client: Socket, task: Socket, bytes = 8 * 1024 * 1024) {
  const up = randomBytes(bytes);
  const down = randomBytes(bytes);
  const atTask = receiveAll(task);
  const atClient = receiveAll(client);
  client.end(up);
  task.end(down);
  return { up, down, atTask: await atTask, atClient: await atClient };
}

/**
 * Ends a relayed connection one of three ways, by turn: both sides end cleanly; the task resets (its relay ends
 * without a clean close, which the other side takes as a cut); the client goes and the task ends.
 */
export function endOneWay(turn: number, client: Socket, task: Socket): void {
  if (turn % 3 === 0) {
    client.end('x');
    task.end('y');
  } else if (turn % 3 === 1) {
    task.resetAndDestroy();
  } else {
    client.destroy();
    task.end();
  }
}
