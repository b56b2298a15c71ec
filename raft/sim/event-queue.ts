// Simulated time: a priority queue of callbacks ordered by (time, insertion order), so two events at the
// same instant always run in the same order and a seed replays exactly.

interface Scheduled {
  time: number;
  seq: number;
  run: () => void;
}

export class EventQueue {
  private heap: Scheduled[] = [];
  private seq = 0;
  now = 0;

  at(time: number, run: () => void): void {
    this.push({ time: Math.max(time, this.now), seq: this.seq++, run });
  }

  after(delay: number, run: () => void): void {
    this.at(this.now + delay, run);
  }

  /** Runs events until the queue is empty or the next one is later than `until`. */
  runUntil(until: number): void {
    while (this.heap.length > 0 && this.heap[0]!.time <= until) {
      const next = this.pop();
      this.now = next.time;
      next.run();
    }
    this.now = Math.max(this.now, until);
  }

  private push(item: Scheduled): void {
    const heap = this.heap;
    heap.push(item);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  private pop(): Scheduled {
    const heap = this.heap;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let smallest = i;
        if (left < heap.length && before(heap[left]!, heap[smallest]!)) smallest = left;
        if (right < heap.length && before(heap[right]!, heap[smallest]!)) smallest = right;
        if (smallest === i) break;
        [heap[i], heap[smallest]] = [heap[smallest]!, heap[i]!];
        i = smallest;
      }
    }
    return top;
  }
}

function before(a: Scheduled, b: Scheduled): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq);
}
