// Open connections per task, and the tasks being drained: what lets a task stop without cutting a request.
// One tracker per place connections to a task are opened: each ingress (clients of this node), and the mesh hop's
// server (clients of other nodes, forwarded here by serveRemote). A task about to stop is drained in all of them.
import type { TaskId } from './endpoints.ts';

export class DrainTracker {
  /** Tasks drain() was called for: no new connections until undrain(). */
  private readonly draining = new Set<TaskId>();
  /** Per task, how to cut each open connection. */
  private readonly open = new Map<TaskId, Set<() => void>>();
  private readonly waiters = new Map<TaskId, Array<() => void>>();

  isDraining(taskId: TaskId): boolean {
    return this.draining.has(taskId);
  }

  /** Open connections to the task. */
  openCount(taskId: TaskId): number {
    return this.open.get(taskId)?.size ?? 0;
  }

  /**
   * Registers an open connection to the task; `cut` ends it (when a drain runs out of time). Returns the function
   * to call once the connection closed, whichever way; calling it again does nothing.
   */
  opened(taskId: TaskId, cut: () => void): () => void {
    let cuts = this.open.get(taskId);
    if (cuts === undefined) {
      cuts = new Set();
      this.open.set(taskId, cuts);
    }
    cuts.add(cut);
    return () => this.closed(taskId, cut);
  }

  /**
   * Stops new connections to the task and resolves once its open ones have closed, or after graceMs, when those
   * left are cut. The task stays excluded until undrain().
   */
  drain(taskId: TaskId, graceMs: number): Promise<void> {
    this.draining.add(taskId);
    if (this.openCount(taskId) === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        // Copied: each cut closes its connection, which removes it from the set.
        for (const cut of [...(this.open.get(taskId) ?? [])]) cut();
        done();
      }, graceMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      let waiters = this.waiters.get(taskId);
      if (waiters === undefined) {
        waiters = [];
        this.waiters.set(taskId, waiters);
      }
      waiters.push(done);
    });
  }

  undrain(taskId: TaskId): void {
    this.draining.delete(taskId);
  }

  private closed(taskId: TaskId, cut: () => void): void {
    const cuts = this.open.get(taskId);
    if (cuts === undefined || !cuts.delete(cut) || cuts.size > 0) return;
    this.open.delete(taskId);
    const waiters = this.waiters.get(taskId);
    this.waiters.delete(taskId);
    for (const waiter of waiters ?? []) waiter();
  }
}
