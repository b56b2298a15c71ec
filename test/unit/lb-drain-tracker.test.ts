// The drain bookkeeping shared by ingresses and the mesh hop's server.
import { describe, expect, it } from 'vitest';
import { DrainTracker } from '../../daemon/lb/drain-tracker.ts';

describe('DrainTracker', () => {
  it('resolves a drain at once when nothing is open, and excludes the task until undrain', async () => {
    const tracker = new DrainTracker();
    await tracker.drain('t1', 10_000);
    expect(tracker.isDraining('t1')).toBe(true);
    expect(tracker.isDraining('t2')).toBe(false);
    tracker.undrain('t1');
    expect(tracker.isDraining('t1')).toBe(false);
  });

  it('waits for the last open connection of the task, not for other tasks', async () => {
    const tracker = new DrainTracker();
    const closeA = tracker.opened('t1', () => {});
    const closeB = tracker.opened('t1', () => {});
    const closeOther = tracker.opened('t2', () => {});
    let done = false;
    const drain = tracker.drain('t1', 10_000).then(() => {
      done = true;
    });
    closeA();
    closeA(); // twice: counted once
    await Promise.resolve();
    expect(done).toBe(false);
    expect(tracker.openCount('t1')).toBe(1);
    closeB();
    await drain;
    expect(done).toBe(true);
    expect(tracker.openCount('t2')).toBe(1);
    closeOther();
  });

  it('cuts what is left after the grace period, through each connection own cut', async () => {
    const tracker = new DrainTracker();
    const cut: string[] = [];
    const closers: Array<() => void> = [];
    for (const name of ['a', 'b']) {
      // Like a real connection: cutting it closes it, which tells the tracker.
      const close = tracker.opened('t1', () => {
        cut.push(name);
        close();
      });
      closers.push(close);
    }
    await tracker.drain('t1', 20);
    expect(cut.sort()).toEqual(['a', 'b']);
    expect(tracker.openCount('t1')).toBe(0);
  });
});
