// Outlier detection: consecutive connect failures eject a task for a doubling time, within the percentage cap.
import { describe, expect, it } from 'vitest';
import type { Endpoint } from '../../daemon/lb/endpoints.ts';
import { OutlierDetector } from '../../daemon/lb/outliers.ts';

const eps = (...ids: string[]): Endpoint[] => ids.map((taskId) => ({ taskId, nodeId: 'n', address: '127.0.0.1:1' }));

function clock() {
  let t = 1000;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

describe('OutlierDetector', () => {
  it('ejects after N consecutive failures for the base time', () => {
    const c = clock();
    const d = new OutlierDetector({ now: c.now });
    const list = eps('a', 'b', 'c', 'd');
    expect(d.recordFailure('a', list)).toBe(false);
    expect(d.recordFailure('a', list)).toBe(false);
    expect(d.isEjected('a')).toBe(false);
    expect(d.recordFailure('a', list)).toBe(true);
    expect(d.isEjected('a')).toBe(true);
    expect(d.ejectedCount(list)).toBe(1);
    c.advance(9_999);
    expect(d.isEjected('a')).toBe(true);
    c.advance(1);
    expect(d.isEjected('a')).toBe(false);
  });

  it('a success resets the consecutive count', () => {
    const d = new OutlierDetector({ now: clock().now });
    const list = eps('a', 'b');
    d.recordFailure('a', list);
    d.recordFailure('a', list);
    d.recordSuccess('a');
    expect(d.recordFailure('a', list)).toBe(false);
    expect(d.recordFailure('a', list)).toBe(false);
    expect(d.recordFailure('a', list)).toBe(true);
  });

  it('doubles the ejection time for repeated ejections, up to the maximum', () => {
    const c = clock();
    const d = new OutlierDetector({ now: c.now, consecutiveFailures: 1, baseEjectionMs: 100, maxEjectionMs: 350 });
    const list = eps('a', 'b');
    const ejectionLength = () => {
      expect(d.recordFailure('a', list)).toBe(true);
      let ms = 0;
      while (d.isEjected('a')) {
        c.advance(10);
        ms += 10;
      }
      return ms;
    };
    expect([ejectionLength(), ejectionLength(), ejectionLength(), ejectionLength()]).toEqual([100, 200, 350, 350]);
  });

  it('starts from the base time again after staying well long enough', () => {
    const c = clock();
    const d = new OutlierDetector({ now: c.now, consecutiveFailures: 1, baseEjectionMs: 100, maxEjectionMs: 400 });
    const list = eps('a', 'b');
    d.recordFailure('a', list);
    c.advance(100);
    d.recordFailure('a', list); // second in a row: 200 ms
    c.advance(200 + 401);
    expect(d.isEjected('a')).toBe(false);
    d.recordFailure('a', list);
    c.advance(100);
    expect(d.isEjected('a')).toBe(false);
  });

  it('never ejects more than the maximum percentage of endpoints', () => {
    const d = new OutlierDetector({ now: clock().now, consecutiveFailures: 1 });
    const four = eps('a', 'b', 'c', 'd');
    expect(d.recordFailure('a', four)).toBe(true);
    expect(d.recordFailure('b', four)).toBe(true);
    expect(d.recordFailure('c', four)).toBe(false);
    expect(d.isEjected('c')).toBe(false);
    expect(d.ejectedCount(four)).toBe(2);
  });

  it('does not eject the only endpoint', () => {
    const d = new OutlierDetector({ now: clock().now, consecutiveFailures: 1 });
    for (let i = 0; i < 5; i++) expect(d.recordFailure('a', eps('a'))).toBe(false);
    expect(d.isEjected('a')).toBe(false);
  });

  it('may eject one of three at 50 %, and another once the first is back', () => {
    const c = clock();
    const d = new OutlierDetector({ now: c.now, consecutiveFailures: 1, baseEjectionMs: 50 });
    const three = eps('a', 'b', 'c');
    expect(d.recordFailure('a', three)).toBe(true);
    expect(d.recordFailure('b', three)).toBe(false);
    c.advance(50);
    expect(d.recordFailure('b', three)).toBe(true);
  });

  it('failures during an ejection do not extend it', () => {
    const c = clock();
    const d = new OutlierDetector({ now: c.now, consecutiveFailures: 1, baseEjectionMs: 100 });
    const list = eps('a', 'b');
    d.recordFailure('a', list);
    c.advance(60);
    expect(d.recordFailure('a', list)).toBe(false);
    c.advance(40);
    expect(d.isEjected('a')).toBe(false);
  });

  it('forgets healthy tasks, so task churn does not grow its memory', () => {
    const c = clock();
    const d = new OutlierDetector({ now: c.now, baseEjectionMs: 10, maxEjectionMs: 20 });
    const list = eps('a', 'b');
    d.recordFailure('a', list);
    d.recordSuccess('a');
    expect(d.size).toBe(0);
    d.recordFailure('b', list);
    d.forget('b');
    expect(d.size).toBe(0);
  });

  it('rejects nonsensical settings', () => {
    expect(() => new OutlierDetector({ consecutiveFailures: 0 })).toThrow(RangeError);
    expect(() => new OutlierDetector({ maxEjectionPercent: 150 })).toThrow(RangeError);
  });
});
