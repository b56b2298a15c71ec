// Closed-loop HTTP write load for benchmarks: N clients, each with one keep-alive connection, each sending
// its next request as soon as the previous one answers. Loopback only; bounded in time and count.
import { Agent, request } from 'node:http';

export interface LoadOptions {
  url: string;
  clients: number;
  seconds: number;
  warmupSeconds: number;
  maxRequests: number;
  /** Request body for the n-th write. */
  body: (n: number) => string;
  /** Whether a 200 response body means the write succeeded. */
  ok?: (body: string) => boolean;
}

export interface LoadResult {
  clients: number;
  writesPerSec: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  requests: number;
}

export function assertLoopback(url: string): void {
  const host = new URL(url).hostname;
  if (!/^127\.|^localhost$|^\[::1\]$/.test(host)) throw new Error(`refusing non-loopback target ${url}`);
}

function post(agent: Agent, url: URL, body: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let data = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          data += c;
        });
        res.on('end', () =>
          res.statusCode === 200 ? resolve(data) : reject(new Error(`HTTP ${res.statusCode}: ${data.slice(0, 200)}`)),
        );
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

export async function postOnce(url: string, body: string, timeoutMs: number): Promise<string> {
  assertLoopback(url);
  const agent = new Agent({ keepAlive: false });
  try {
    return await post(agent, new URL(url), body, timeoutMs);
  } finally {
    agent.destroy();
  }
}

export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  assertLoopback(opts.url);
  const url = new URL(opts.url);
  const agent = new Agent({ keepAlive: true, maxSockets: opts.clients });
  let issued = 0;
  const phase = async (seconds: number, record: boolean) => {
    const latencies: number[] = [];
    let errors = 0;
    const deadline = performance.now() + seconds * 1000;
    const started = performance.now();
    const worker = async () => {
      while (performance.now() < deadline && issued < opts.maxRequests) {
        const n = issued++;
        const t0 = performance.now();
        try {
          const body = await post(agent, url, opts.body(n), 5000);
          if (opts.ok && !opts.ok(body)) throw new Error('bad answer');
          if (record) latencies.push(performance.now() - t0);
        } catch {
          errors++;
        }
      }
    };
    await Promise.all(Array.from({ length: opts.clients }, worker));
    return { latencies, errors, elapsed: (performance.now() - started) / 1000 };
  };
  await phase(opts.warmupSeconds, false);
  const { latencies, errors, elapsed } = await phase(opts.seconds, true);
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? Number.NaN;
  return {
    clients: opts.clients,
    writesPerSec: Math.round(latencies.length / elapsed),
    p50Ms: round(pct(0.5)),
    p99Ms: round(pct(0.99)),
    errors,
    requests: latencies.length,
  };
}

export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
