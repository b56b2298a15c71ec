// Raft over plain TCP: one outgoing connection per peer, length-prefixed msgpack frames. Used by the
// benchmark and tests that run members as separate OS processes; swarmd itself carries the same frames
// over its encrypted libp2p mesh.
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { Message } from '../core/messages.ts';
import type { NodeId } from '../types.ts';
import { encodeFrame, FrameDecoder } from './framing.ts';
import { decodeMessages, encodeMessages, InvalidMessageError, MAX_FRAME_BYTES } from './message-codec.ts';
import type { RaftTransport } from './transport.ts';

export interface TcpAddress {
  host: string;
  port: number;
}

export interface TcpTransportOptions {
  listen: TcpAddress;
  peers: Map<NodeId, TcpAddress>;
  log?: (message: string) => void;
}

interface Outgoing {
  socket: Socket | null;
  connecting: boolean;
  /** Frames written while the connection was being made. */
  backlog: Uint8Array[];
  retryAt: number;
}

const RECONNECT_DELAY_MS = 100;
const MAX_BACKLOG_FRAMES = 1024;

export class TcpTransport implements RaftTransport {
  onUnreachable?: (peer: NodeId) => void;
  private readonly opts: TcpTransportOptions;
  private server: Server | null = null;
  private readonly outgoing = new Map<NodeId, Outgoing>();
  private readonly incoming = new Set<Socket>();
  private closed = false;

  constructor(opts: TcpTransportOptions) {
    this.opts = opts;
  }

  /** Binds the listening socket; resolves once it accepts connections. */
  async start(): Promise<void> {
    this.server = createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.opts.listen.port, this.opts.listen.host, () => resolve());
    });
  }

  private handler: (m: Message) => void = () => {};

  listen(handler: (message: Message) => void): void {
    this.handler = handler;
  }

  send(to: NodeId, messages: Message[]): void {
    if (this.closed) return;
    const address = this.opts.peers.get(to);
    if (!address) return;
    let out = this.outgoing.get(to);
    if (!out) {
      out = { socket: null, connecting: false, backlog: [], retryAt: 0 };
      this.outgoing.set(to, out);
    }
    const frame = encodeFrame(encodeMessages(messages));
    if (out.socket && !out.connecting) {
      out.socket.write(frame);
      return;
    }
    if (out.backlog.length < MAX_BACKLOG_FRAMES) out.backlog.push(frame);
    if (!out.connecting && Date.now() >= out.retryAt) this.connect(to, address, out);
  }

  private connect(peer: NodeId, address: TcpAddress, out: Outgoing): void {
    out.connecting = true;
    const socket = createConnection({ host: address.host, port: address.port });
    socket.setNoDelay(true);
    out.socket = socket;
    socket.on('connect', () => {
      out.connecting = false;
      for (const frame of out.backlog) socket.write(frame);
      out.backlog = [];
    });
    socket.on('data', () => {}); // peers never answer on this connection
    socket.on('error', () => {});
    socket.on('close', () => {
      if (out.socket === socket) {
        out.socket = null;
        out.connecting = false;
        out.backlog = [];
        out.retryAt = Date.now() + RECONNECT_DELAY_MS;
        if (!this.closed) this.onUnreachable?.(peer);
      }
    });
  }

  private accept(socket: Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    this.incoming.add(socket);
    const decoder = new FrameDecoder(MAX_FRAME_BYTES);
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const frame of decoder.push(chunk)) {
          for (const m of decodeMessages(frame)) this.handler(m);
        }
      } catch (error) {
        // A bad frame closes only this connection; the member keeps running.
        const reason = error instanceof InvalidMessageError ? error.message : `bad frame: ${(error as Error).message}`;
        this.opts.log?.(`raft tcp: closing connection from ${socket.remoteAddress}: ${reason}`);
        socket.destroy();
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => this.incoming.delete(socket));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const out of this.outgoing.values()) out.socket?.destroy();
    for (const socket of this.incoming) socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
