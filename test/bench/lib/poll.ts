// Polling for benchmarks that time how long a swarm takes to get somewhere: both sides are polled alike.
import { round } from './http-load.ts';

export const POLL_MS = 50;
const TIMEOUT_MS = 180_000;

/** Seconds until `check` holds (polled every POLL_MS); throws after 3 minutes, naming `what`. */
export async function until(what: string, check: () => Promise<boolean>): Promise<number> {
  const started = performance.now();
  while (performance.now() - started < TIMEOUT_MS) {
    if (await check().catch(() => false)) return round((performance.now() - started) / 1000, 3);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  throw new Error(`${what}: not done within ${TIMEOUT_MS / 1000} s`);
}
