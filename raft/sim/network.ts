// A simulated network between members: per-message delay (so messages reorder), drops, duplicates,
// and directed link cuts for symmetric and one-way partitions.
import type { Message } from '../core/messages.ts';
import type { NodeId } from '../types.ts';
import type { EventQueue } from './event-queue.ts';
import type { Prng } from './prng.ts';

export interface NetworkConditions {
  dropRate: number;
  duplicateRate: number;
  minDelay: number;
  maxDelay: number;
  /** Chance that a message takes up to 10x maxDelay (a stalled link). */
  slowRate: number;
}

export const reliableNetwork: NetworkConditions = {
  dropRate: 0,
  duplicateRate: 0,
  minDelay: 1,
  maxDelay: 4,
  slowRate: 0,
};

export class SimNetwork {
  conditions: NetworkConditions = reliableNetwork;
  /** Directed cuts: "a>b" means messages from a to b are lost. */
  private readonly cuts = new Set<string>();
  delivered = 0;
  dropped = 0;
  private readonly queue: EventQueue;
  private readonly random: Prng;
  private readonly deliver: (m: Message) => void;

  constructor(queue: EventQueue, random: Prng, deliver: (m: Message) => void) {
    this.queue = queue;
    this.random = random;
    this.deliver = deliver;
  }

  send(m: Message): void {
    const c = this.conditions;
    if (this.cuts.has(`${m.from}>${m.to}`) || this.random.chance(c.dropRate)) {
      this.dropped++;
      return;
    }
    const copies = this.random.chance(c.duplicateRate) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const slow = this.random.chance(c.slowRate) ? 10 : 1;
      const delay = this.random.int(c.minDelay, c.maxDelay * slow);
      this.queue.after(delay, () => {
        // A cut made while the message was in flight loses it too.
        if (this.cuts.has(`${m.from}>${m.to}`)) {
          this.dropped++;
          return;
        }
        this.delivered++;
        this.deliver(m);
      });
    }
  }

  cut(from: NodeId, to: NodeId): void {
    this.cuts.add(`${from}>${to}`);
  }

  /** Splits members into two sides that cannot talk to each other. */
  partition(sideA: readonly NodeId[], sideB: readonly NodeId[]): void {
    for (const a of sideA) {
      for (const b of sideB) {
        this.cut(a, b);
        this.cut(b, a);
      }
    }
  }

  healAll(): void {
    this.cuts.clear();
  }

  describeCuts(): string {
    return [...this.cuts].sort().join(' ');
  }
}
