// Where the next task of a service goes: spread preferences first, then the least loaded node.
//
// The feasible nodes are grouped into a tree by the values of the spread attributes (one level per preference,
// as swarmkit's decision tree; a node without the label sits under ""). Each branch keeps its children in a
// min-heap keyed by the service's task count in that branch (then the value, for determinism); each leaf keeps
// its nodes in a min-heap keyed by (the service's tasks on the node, all tasks on the node, node ID). Placing a
// task walks down the heap tops, then fixes the heaps on the way back up: O(depth * log n) per task, where a
// rescan would be O(nodes). Branch counts include the service's tasks on nodes that can't take more, so a zone
// that is full still counts as holding its tasks.
import { type ClusterState, YIELD_EVERY } from './cluster.ts';
import type { NodeAttribute } from './constraints.ts';
import { MinHeap } from './heap.ts';

interface Branch {
  value: string;
  /** Tasks of the service under this branch. */
  count: number;
  /** Set while building, by value. */
  children: Map<string, Branch> | null;
  /** Leaves only: feasible node indices, until the heap is built. */
  members: number[];
  childHeap: MinHeap<Branch> | null;
  nodeHeap: MinHeap<number> | null;
}

const branch = (value: string, leaf: boolean): Branch => ({
  value,
  count: 0,
  children: leaf ? null : new Map(),
  members: [],
  childHeap: null,
  nodeHeap: null,
});

const lessBranch = (a: Branch, b: Branch) => a.count < b.count || (a.count === b.count && a.value < b.value);

const isEmpty = (b: Branch) => (b.nodeHeap ? b.nodeHeap.size === 0 : (b.childHeap as MinHeap<Branch>).size === 0);

export class SpreadTree {
  readonly #root: Branch;
  /** The branches walked by next(), root first, leaf last. */
  #path: Branch[] = [];

  readonly #cluster: ClusterState;
  readonly #levels: readonly NodeAttribute[];
  readonly #lessNode: (a: number, b: number) => boolean;

  /** @param svcCount the service's tasks per node; the caller increments it on each placement. */
  constructor(cluster: ClusterState, levels: readonly NodeAttribute[], svcCount: Int32Array) {
    this.#cluster = cluster;
    this.#levels = levels;
    this.#root = branch('', levels.length === 0);
    const { nodes, total } = cluster;
    this.#lessNode = (a, b) => {
      const sa = svcCount[a] as number;
      const sb = svcCount[b] as number;
      if (sa !== sb) return sa < sb;
      const ta = total[a] as number;
      const tb = total[b] as number;
      if (ta !== tb) return ta < tb;
      return nodes[a]!.id < nodes[b]!.id;
    };
  }

  /**
   * Fills the tree; a generator so that a large cluster is built over several slices.
   * @param feasible node indices that can take at least one task
   * @param serviceNodes the node index of each task the service already has (for the branch counts)
   */
  *build(feasible: readonly number[], serviceNodes: readonly number[]): Generator<void, void, void> {
    const nodes = this.#cluster.nodes;
    const levels = this.#levels;
    let work = 0;
    for (const i of feasible) {
      let b = this.#root;
      for (let l = 0; l < levels.length; l++) {
        const value = levels[l]!(nodes[i]!);
        const children = b.children as Map<string, Branch>;
        let child = children.get(value);
        if (!child) {
          child = branch(value, l === levels.length - 1);
          children.set(value, child);
        }
        b = child;
      }
      b.members.push(i);
      if (++work % YIELD_EVERY === 0) yield;
    }
    // Count the service's tasks into every branch on their node's path that exists (has feasible nodes).
    if (levels.length > 0) {
      for (const i of serviceNodes) {
        let b = this.#root;
        for (let l = 0; l < levels.length; l++) {
          const child = (b.children as Map<string, Branch>).get(levels[l]!(nodes[i]!));
          if (!child) break;
          child.count++;
          b = child;
        }
        if (++work % YIELD_EVERY === 0) yield;
      }
    }
    yield* finish(this.#root, this.#lessNode);
  }

  get empty(): boolean {
    return isEmpty(this.#root);
  }

  /** The node the next task should go to; the tree must not be empty. Follow with placed(). */
  next(): number {
    const path = this.#path;
    path.length = 0;
    let b = this.#root;
    path.push(b);
    while (b.childHeap) {
      b = b.childHeap.peek()!;
      path.push(b);
    }
    return (b.nodeHeap as MinHeap<number>).peek()!;
  }

  /**
   * After the caller placed a task on the node next() returned (and updated its counts): re-orders that node
   * and its branches, dropping the node if it has no room left and any branch left with no nodes.
   */
  placed(hasRoom: boolean): void {
    const path = this.#path;
    const leaf = path[path.length - 1]!;
    const nodeHeap = leaf.nodeHeap as MinHeap<number>;
    if (hasRoom) nodeHeap.updateTop();
    else nodeHeap.pop();
    for (let k = path.length - 1; k > 0; k--) {
      const child = path[k]!;
      child.count++;
      const heap = path[k - 1]!.childHeap as MinHeap<Branch>;
      if (isEmpty(child)) heap.pop();
      else heap.updateTop();
    }
  }
}

/** Builds the heaps bottom-up and drops the build-time maps. */
function* finish(b: Branch, lessNode: (a: number, b: number) => boolean): Generator<void, void, void> {
  if (!b.children) {
    b.nodeHeap = new MinHeap(b.members, lessNode);
    yield* b.nodeHeap.heapify(YIELD_EVERY);
    return;
  }
  const children = [...b.children.values()];
  for (const child of children) yield* finish(child, lessNode);
  b.childHeap = new MinHeap(
    children.filter((c) => !isEmpty(c)),
    lessBranch,
  );
  yield* b.childHeap.heapify(YIELD_EVERY);
  b.children = null;
}
