// Passive outlier detection: a task whose connects keep failing is taken out of rotation for a while, before the
// control plane has noticed (health checks run every few seconds, a task on a dead node takes longer to be marked).
//
// The rules, after Envoy's consecutive-5xx detector applied to TCP connects:
// - N consecutive connect failures (default 3) eject the task for the base time (default 10 s).
// - Ejected again soon after coming back (within maxEjectionMs of its last return), the time doubles each time, up
//   to maxEjectionMs; a task that stays well that long starts from the base time again.
// - Never more than maxEjectionPercent (default 50 %) of a service's endpoints are ejected at once, so a service-wide
//   problem (its network, an overloaded node) does not empty the rotation; with one endpoint nothing is ejected.
// No timers: expiry is checked when asked, against an injectable clock.
import type { Endpoint, TaskId } from './endpoints.ts';

export interface OutlierOptions {
  consecutiveFailures?: number;
  baseEjectionMs?: number;
  maxEjectionMs?: number;
  maxEjectionPercent?: number;
  /** Milliseconds, monotonic. Default performance.now. */
  now?: () => number;
}

interface TaskHealth {
  consecutiveFailures: number;
  /** Ejected until this time; 0 when not ejected. */
  ejectedUntil: number;
  /** Ejections in a row (doubling the time); reset once the task stays in rotation for maxEjectionMs. */
  streak: number;
}

export class OutlierDetector {
  readonly consecutiveFailures: number;
  readonly baseEjectionMs: number;
  readonly maxEjectionMs: number;
  readonly maxEjectionPercent: number;
  private readonly now: () => number;
  private readonly tasks = new Map<TaskId, TaskHealth>();

  constructor(options: OutlierOptions = {}) {
    this.consecutiveFailures = options.consecutiveFailures ?? 3;
    this.baseEjectionMs = options.baseEjectionMs ?? 10_000;
    this.maxEjectionMs = Math.max(options.maxEjectionMs ?? 300_000, this.baseEjectionMs);
    this.maxEjectionPercent = options.maxEjectionPercent ?? 50;
    this.now = options.now ?? (() => performance.now());
    if (this.consecutiveFailures < 1) throw new RangeError('consecutiveFailures must be at least 1');
    if (this.maxEjectionPercent < 0 || this.maxEjectionPercent > 100) {
      throw new RangeError('maxEjectionPercent must be between 0 and 100');
    }
  }

  isEjected(taskId: TaskId): boolean {
    const health = this.tasks.get(taskId);
    return health !== undefined && health.ejectedUntil > this.now();
  }

  /** A connect to the task succeeded. */
  recordSuccess(taskId: TaskId): void {
    const health = this.tasks.get(taskId);
    if (health === undefined) return;
    health.consecutiveFailures = 0;
    this.maybeForget(taskId, health);
  }

  /**
   * A connect to the task failed. `serviceEndpoints` is the service's current endpoint list (for the percentage
   * limit). Returns true when this failure ejected the task.
   */
  recordFailure(taskId: TaskId, serviceEndpoints: readonly Endpoint[]): boolean {
    const now = this.now();
    let health = this.tasks.get(taskId);
    if (health === undefined) {
      health = { consecutiveFailures: 0, ejectedUntil: 0, streak: 0 };
      this.tasks.set(taskId, health);
    }
    // Failures of connections picked before the ejection (in flight at the time) do not extend it.
    if (health.ejectedUntil > now) return false;
    health.consecutiveFailures++;
    if (health.consecutiveFailures < this.consecutiveFailures) return false;
    if (!this.mayEject(serviceEndpoints, now)) return false;
    // The streak continues only if the last ejection ended recently.
    if (health.streak > 0 && now - health.ejectedUntil > this.maxEjectionMs) health.streak = 0;
    health.streak++;
    const duration = Math.min(this.baseEjectionMs * 2 ** (health.streak - 1), this.maxEjectionMs);
    health.ejectedUntil = now + duration;
    health.consecutiveFailures = 0;
    return true;
  }

  /** How many of these endpoints are ejected now. */
  ejectedCount(endpoints: readonly Endpoint[]): number {
    const now = this.now();
    let count = 0;
    for (const endpoint of endpoints) {
      const health = this.tasks.get(endpoint.taskId);
      if (health !== undefined && health.ejectedUntil > now) count++;
    }
    return count;
  }

  /** Drops what is known about a task (it is gone from the service). */
  forget(taskId: TaskId): void {
    this.tasks.delete(taskId);
  }

  /** Tasks with any state kept (for tests and for bounding memory). */
  get size(): number {
    return this.tasks.size;
  }

  private mayEject(endpoints: readonly Endpoint[], now: number): boolean {
    const allowed = Math.floor((endpoints.length * this.maxEjectionPercent) / 100);
    let ejected = 0;
    for (const endpoint of endpoints) {
      const health = this.tasks.get(endpoint.taskId);
      if (health !== undefined && health.ejectedUntil > now) ejected++;
    }
    return ejected + 1 <= allowed;
  }

  /** Keeps the map to the tasks that have something to remember, so churn of task IDs does not grow it. */
  private maybeForget(taskId: TaskId, health: TaskHealth): void {
    if (health.consecutiveFailures > 0) return;
    const now = this.now();
    if (health.ejectedUntil > now) return;
    if (health.streak > 0 && now - health.ejectedUntil <= this.maxEjectionMs) return;
    this.tasks.delete(taskId);
  }
}
