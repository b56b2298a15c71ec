// How a RaftNode reaches its peers. The driver hands each Ready's messages to send() and feeds whatever
// arrives to the handler; delivery is best effort (Raft tolerates loss, duplication and reordering).
import type { Message } from '../core/messages.ts';
import type { NodeId } from '../types.ts';

export interface RaftTransport {
  /** Starts delivering incoming messages to `handler`. */
  listen(handler: (message: Message) => void): void;
  /** Sends messages to one peer, in order. Must not throw; failures are reported with onUnreachable. */
  send(to: NodeId, messages: Message[]): void;
  /** Called by the transport when a peer cannot be reached (the driver slows replication to it). */
  onUnreachable?: (peer: NodeId) => void;
  close(): Promise<void>;
}

/** Delivers messages between RaftNodes in one process, with optional cuts (tests). */
export class MemoryNetwork {
  private readonly handlers = new Map<NodeId, (message: Message) => void>();
  private readonly cuts = new Set<string>();

  transport(id: NodeId): RaftTransport {
    return {
      listen: (handler) => {
        this.handlers.set(id, handler);
      },
      send: (to, messages) => {
        if (this.cuts.has(`${id}>${to}`)) return;
        // Asynchronous like a real network, so no step runs re-entrantly inside another.
        setImmediate(() => {
          if (this.cuts.has(`${id}>${to}`)) return;
          const handler = this.handlers.get(to);
          if (handler) for (const m of messages) handler(m);
        });
      },
      close: async () => {
        this.handlers.delete(id);
      },
    };
  }

  isolate(id: NodeId, others: NodeId[]): void {
    for (const other of others) {
      this.cuts.add(`${id}>${other}`);
      this.cuts.add(`${other}>${id}`);
    }
  }

  healAll(): void {
    this.cuts.clear();
  }
}
