// A binary min-heap ordered by a caller's less(). The scheduler only ever changes the top item's key (the node
// or branch it just placed a task on), so besides pop it needs just "the top's key grew": updateTop().

export class MinHeap<T> {
  readonly #items: T[];
  readonly #less: (a: T, b: T) => boolean;

  /** Takes ownership of items; run heapify() before any other call. */
  constructor(items: T[], less: (a: T, b: T) => boolean) {
    this.#items = items;
    this.#less = less;
  }

  /** Orders the items in O(n); a generator yielding every `every` steps, so a big heap spans several slices. */
  *heapify(every: number): Generator<void, void, void> {
    for (let i = (this.#items.length >> 1) - 1; i >= 0; i--) {
      this.#siftDown(i);
      if (i % every === 0) yield;
    }
  }

  get size(): number {
    return this.#items.length;
  }

  peek(): T | undefined {
    return this.#items[0];
  }

  pop(): T | undefined {
    const items = this.#items;
    const top = items[0];
    const last = items.pop();
    if (items.length > 0 && last !== undefined) {
      items[0] = last;
      this.#siftDown(0);
    }
    return top;
  }

  /** Restores the order after the top item's key increased. */
  updateTop(): void {
    this.#siftDown(0);
  }

  #siftDown(start: number): void {
    const items = this.#items;
    const n = items.length;
    const item = items[start] as T;
    let i = start;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= n) break;
      const right = left + 1;
      let child = left;
      if (right < n && this.#less(items[right] as T, items[left] as T)) child = right;
      if (!this.#less(items[child] as T, item)) break;
      items[i] = items[child] as T;
      i = child;
    }
    items[i] = item;
  }
}
