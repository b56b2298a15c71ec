// Raft between managers over the encrypted mesh: one long-lived outbound stream per peer, each frame a
// batch of Raft messages. Inbound frames are validated field by field, and a message must come from the
// member whose certificate the connection showed: a manager cannot speak for another.
import type { Message } from '../../raft/core/messages.ts';
import { InvalidMessageError, validateMessage } from '../../raft/driver/message-codec.ts';
import type { RaftTransport } from '../../raft/driver/transport.ts';
import type { FramedStream } from './framed-stream.ts';
import type { MembershipGate } from './gate.ts';
import type { MeshHost } from './host.ts';
import { PROTOCOLS } from './protocols.ts';

/** Largest Raft frame accepted: appends are bounded by maxSizePerMsg, snapshot chunks by chunk size. */
const MAX_RAFT_FRAME = 16 * 1024 * 1024;
/** Batches queued for one peer before new ones are dropped (Raft resends what is lost). */
const MAX_QUEUED_BATCHES = 512;
const RETRY_DELAY_MS = 250;

interface Outbound {
  stream: FramedStream | null;
  opening: boolean;
  queue: Message[][];
  flushing: boolean;
  retryAt: number;
}

export interface MeshRaftTransportOptions {
  host: MeshHost;
  gate: MembershipGate;
  /** PeerId of a manager by its node ID (from the store), or undefined when unknown. */
  peerOf: (nodeId: string) => string | undefined;
  /**
   * Whether messages from this member are taken now, checked for every frame: a stream stays open while roles
   * change, and one opened before this manager had its store (the role check at open then had only the peer's
   * certificate to go by) must not keep a former manager's messages coming. Left out: all members' are.
   */
  accepts?: (nodeId: string) => boolean;
  log?: (level: 'info' | 'warn', message: string) => void;
}

export class MeshRaftTransport implements RaftTransport {
  onUnreachable?: (peer: string) => void;
  private readonly opts: MeshRaftTransportOptions;
  private readonly outbound = new Map<string, Outbound>();
  private handler: (m: Message) => void = () => {};
  private closed = false;

  constructor(opts: MeshRaftTransportOptions) {
    this.opts = opts;
  }

  async start(): Promise<void> {
    await this.opts.host.handle(PROTOCOLS.raft, (stream, remotePeer) => this.receive(stream, remotePeer), {
      maxFrameBytes: MAX_RAFT_FRAME,
    });
  }

  listen(handler: (message: Message) => void): void {
    this.handler = handler;
  }

  send(to: string, messages: Message[]): void {
    if (this.closed) return;
    let out = this.outbound.get(to);
    if (!out) {
      out = { stream: null, opening: false, queue: [], flushing: false, retryAt: 0 };
      this.outbound.set(to, out);
    }
    if (out.queue.length >= MAX_QUEUED_BATCHES) return;
    out.queue.push(messages);
    void this.flush(to, out);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const out of this.outbound.values()) out.stream?.abort(new Error('raft transport closed'));
    this.outbound.clear();
  }

  private async flush(to: string, out: Outbound): Promise<void> {
    if (out.flushing) return;
    out.flushing = true;
    try {
      while (out.queue.length > 0 && !this.closed) {
        const stream = out.stream ?? (await this.open(to, out));
        if (!stream) {
          out.queue.length = 0;
          return;
        }
        const batch = out.queue.shift()!;
        try {
          await stream.send(batch);
        } catch (error) {
          this.drop(to, out, error as Error);
          return;
        }
      }
    } finally {
      out.flushing = false;
    }
  }

  private async open(to: string, out: Outbound): Promise<FramedStream | null> {
    if (Date.now() < out.retryAt) return null;
    const peerId = this.opts.peerOf(to);
    if (!peerId) {
      this.unreachable(to, out);
      return null;
    }
    try {
      await this.opts.gate.ensureHello(peerId);
      const { stream } = await this.opts.host.openStream(peerId, PROTOCOLS.raft, {
        signal: AbortSignal.timeout(5000),
        maxFrameBytes: MAX_RAFT_FRAME,
      });
      out.stream = stream;
      return stream;
    } catch (error) {
      this.opts.log?.('warn', `raft: cannot reach ${to}: ${(error as Error).message}`);
      this.unreachable(to, out);
      return null;
    }
  }

  private drop(to: string, out: Outbound, error: Error): void {
    out.stream?.abort(error);
    out.stream = null;
    this.unreachable(to, out);
  }

  private unreachable(to: string, out: Outbound): void {
    out.queue.length = 0;
    out.retryAt = Date.now() + RETRY_DELAY_MS;
    this.onUnreachable?.(to);
  }

  private async receive(stream: FramedStream, remotePeer: string): Promise<void> {
    const sender = this.opts.gate.claimsOf(remotePeer);
    if (!sender) {
      stream.abort(new Error('not a member'));
      return;
    }
    for await (const frame of stream) {
      if (this.opts.accepts && !this.opts.accepts(sender.nodeId)) {
        // A manager left out (demoted, or by --force-new-cluster) that still speaks for an old membership: its
        // messages (a higher term, a vote request) would unseat this cluster's leader.
        this.opts.log?.('warn', `raft: closing stream from ${sender.nodeId}: not a manager of this cluster`);
        stream.abort(new Error('not a manager of this cluster'));
        return;
      }
      if (!Array.isArray(frame)) {
        stream.abort(new InvalidMessageError('raft frame is not a list of messages'));
        return;
      }
      for (const raw of frame) {
        let message: Message;
        try {
          message = validateMessage(raw);
        } catch (error) {
          this.opts.log?.('warn', `raft: closing stream from ${sender.nodeId}: ${(error as Error).message}`);
          stream.abort(error as Error);
          return;
        }
        if (message.from !== sender.nodeId) {
          this.opts.log?.('warn', `raft: ${sender.nodeId} sent a message claiming to be from ${message.from}; closing`);
          stream.abort(new Error('raft message sender does not match the connection'));
          return;
        }
        this.handler(message);
      }
    }
  }
}
