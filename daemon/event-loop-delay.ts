// How late the daemon's main event loop runs what is due: Raft's ticks and heartbeats, the API and (with
// --lb-threads 0) the load balancer share it, so a long synchronous step anywhere, or a busy forwarder, shows here.
// Served on /v1/metrics as quantiles of the delay since the previous scrape, as prom-client's nodejs_eventloop_lag_*
// gauges are (reset on each scrape, so each one describes the interval it closes).
import { monitorEventLoopDelay } from 'node:perf_hooks';

/** Sampling resolution of the delay, ms: Node's default, cheap enough to leave on. */
const RESOLUTION_MS = 10;

export class EventLoopDelay {
  private readonly histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });

  constructor() {
    this.histogram.enable();
  }

  /** Prometheus text for the delay since the last call, then starts a new interval. */
  render(): string {
    const h = this.histogram;
    // The histogram holds the whole interval between samples, the resolution included: the delay is what exceeds it.
    // An interval with no sample (a scrape right after the previous one) reports 0, not the histogram's sentinels.
    const seconds = (ns: number) => (h.count === 0 ? 0 : Math.max(0, ns / 1e6 - RESOLUTION_MS) / 1e3);
    const lines = [
      '# HELP swarmd_event_loop_delay_seconds Delay of the daemon main thread event loop since the previous scrape.',
      '# TYPE swarmd_event_loop_delay_seconds gauge',
      `swarmd_event_loop_delay_seconds{quantile="0.5"} ${seconds(h.percentile(50))}`,
      `swarmd_event_loop_delay_seconds{quantile="0.99"} ${seconds(h.percentile(99))}`,
      `swarmd_event_loop_delay_seconds{quantile="1"} ${seconds(h.max)}`,
    ];
    h.reset();
    return `${lines.join('\n')}\n`;
  }

  stop(): void {
    this.histogram.disable();
  }
}
