// What a leader knows about one follower's log, and how fast it may send to it.
//
// probe:     we don't know where the follower's log ends; one append per heartbeat until it answers.
// replicate: the follower is in sync; appends are pipelined optimistically, bounded by the inflight window.
// snapshot:  the follower is behind our compacted log; we stream it a snapshot and send nothing else.

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

/** Sliding window of in-flight appends (last index and bytes of each), oldest first. */
export class Inflights {
  private readonly lastIndexes: number[] = [];
  private readonly sizes: number[] = [];
  private bytes = 0;
  readonly maxMessages: number;
  readonly maxBytes: number;
  constructor(maxMessages: number, maxBytes: number) {
    this.maxMessages = maxMessages;
    this.maxBytes = maxBytes;
  }

  add(lastIndex: number, size: number): void {
    this.lastIndexes.push(lastIndex);
    this.sizes.push(size);
    this.bytes += size;
  }

  /** The follower acknowledged everything up to index. */
  freeUpTo(index: number): void {
    while (this.lastIndexes.length > 0 && this.lastIndexes[0]! <= index) {
      this.lastIndexes.shift();
      this.bytes -= this.sizes.shift()!;
    }
  }

  freeFirst(): void {
    if (this.lastIndexes.length === 0) return;
    this.lastIndexes.shift();
    this.bytes -= this.sizes.shift()!;
  }

  full(): boolean {
    return this.lastIndexes.length >= this.maxMessages || this.bytes >= this.maxBytes;
  }

  count(): number {
    return this.lastIndexes.length;
  }

  reset(): void {
    this.lastIndexes.length = 0;
    this.sizes.length = 0;
    this.bytes = 0;
  }
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  /** In probe state: an append is out and we wait for its answer (or the next heartbeat) before another. */
  probeSent = false;
  /** Heard from since the last check-quorum round. */
  recentActive = true;
  /** Leader tick at which the latest heartbeat this follower acknowledged was sent (lease reads). */
  heartbeatAckedTick = Number.NEGATIVE_INFINITY;
  /** Snapshot being streamed: its index, and how many bytes the follower confirmed. */
  snapshotIndex = 0;
  snapshotAcked = 0;
  /** Ticks since the follower last acknowledged a snapshot chunk. */
  snapshotIdleTicks = 0;
  readonly inflights: Inflights;
  readonly isLearner: boolean;

  constructor(next: number, isLearner: boolean, maxInflightMessages: number, maxInflightBytes: number) {
    this.next = next;
    this.isLearner = isLearner;
    this.inflights = new Inflights(maxInflightMessages, maxInflightBytes);
  }

  becomeProbe(): void {
    // After a snapshot, the follower has at least the snapshot's index.
    if (this.state === 'snapshot') {
      this.next = Math.max(this.match + 1, this.snapshotIndex + 1);
    } else {
      this.next = this.match + 1;
    }
    this.state = 'probe';
    this.probeSent = false;
    this.snapshotIndex = 0;
    this.inflights.reset();
  }

  becomeReplicate(): void {
    this.state = 'replicate';
    this.next = this.match + 1;
    this.probeSent = false;
    this.snapshotIndex = 0;
    this.inflights.reset();
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.state = 'snapshot';
    this.snapshotIndex = snapshotIndex;
    this.snapshotAcked = 0;
    this.snapshotIdleTicks = 0;
    this.inflights.reset();
  }

  /** The follower has everything up to index. Returns false for a stale acknowledgement. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (index > this.match) {
      this.match = index;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, index + 1);
    return updated;
  }

  /**
   * The follower rejected an append at rejectedIndex; hint is where its log may match ours.
   * Returns false if the rejection is stale (about an append we have since moved past).
   */
  maybeDecrease(rejectedIndex: number, hint: number): boolean {
    if (this.state === 'replicate') {
      if (rejectedIndex <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejectedIndex) return false;
    this.next = Math.max(Math.min(rejectedIndex, hint + 1), this.match + 1, 1);
    this.probeSent = false;
    return true;
  }

  /** Whether we must hold back appends to this follower for now. */
  paused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflights.full();
      case 'snapshot':
        return true;
    }
  }
}
