// Membership gating: until a peer has shown a valid membership certificate for the PeerId it proved on
// the connection, it gets only the join and hello protocols. Manager-only protocols refuse workers; a
// node on the denylist is refused everything and its connections are closed.
import type { FramedStream } from './framed-stream.ts';
import type { MeshHost } from './host.ts';
import type { CertificateVerifier, MembershipClaims } from './pki.ts';
import { MANAGER_ONLY, PROTOCOLS } from './protocols.ts';

export interface GateOptions {
  host: MeshHost;
  verifier: CertificateVerifier;
  clusterId: string;
  ownCert: () => string;
  /** Whether a node ID or PeerId has been removed from the swarm. */
  isDenied: (nodeId: string, peerId: string) => boolean;
  /** The node's current role where this node knows it (managers read the store); overrides the cert. */
  currentRole?: (nodeId: string) => 'manager' | 'worker' | undefined;
  log?: (level: 'info' | 'warn', message: string) => void;
}

interface HelloFrame {
  cert?: unknown;
  error?: unknown;
}

const HELLO_TIMEOUT_MS = 5000;

export class MembershipGate {
  private readonly opts: GateOptions;
  private readonly members = new Map<string, MembershipClaims>();
  private readonly pending = new Map<string, Promise<MembershipClaims>>();

  constructor(opts: GateOptions) {
    this.opts = opts;
  }

  async start(): Promise<void> {
    // Membership is shown per connection: a peer that reconnects (after a restart, say) says hello again,
    // and one that restarted must not be trusted on what it showed before.
    this.opts.host.onPeerDisconnect((peerId) => this.forget(peerId));
    await this.opts.host.handle(PROTOCOLS.hello, (stream, remotePeer) => this.answerHello(stream, remotePeer), {
      open: true,
      maxFrameBytes: 16 * 1024,
    });
  }

  /** Claims of a peer that said hello, if it is still a member in good standing. */
  claimsOf(peerId: string): MembershipClaims | undefined {
    const claims = this.members.get(peerId);
    if (!claims) return undefined;
    if (claims.expiresAt < Date.now() || this.opts.isDenied(claims.nodeId, peerId)) {
      this.members.delete(peerId);
      return undefined;
    }
    return claims;
  }

  /** The host's authorize hook for inbound streams of protected protocols. */
  authorize(remotePeer: string, protocol: string): Error | null {
    const claims = this.claimsOf(remotePeer);
    if (!claims) return new Error(`peer ${remotePeer} is not a swarm member (no valid membership shown)`);
    const role = this.opts.currentRole?.(claims.nodeId) ?? claims.role;
    if (MANAGER_ONLY.has(protocol) && role !== 'manager') {
      return new Error(`${protocol} is for managers only; node ${claims.nodeId} is a ${role}`);
    }
    return null;
  }

  /** Exchanges certificates with a peer (once per peer while valid); resolves with its claims. */
  ensureHello(peerId: string): Promise<MembershipClaims> {
    const known = this.claimsOf(peerId);
    if (known) return Promise.resolve(known);
    let pending = this.pending.get(peerId);
    if (!pending) {
      pending = this.sayHello(peerId).finally(() => this.pending.delete(peerId));
      this.pending.set(peerId, pending);
    }
    return pending;
  }

  /** Drops what we know of a peer (removed from the swarm, or its certificate changed). */
  forget(peerId: string): void {
    this.members.delete(peerId);
  }

  private async sayHello(peerId: string): Promise<MembershipClaims> {
    const signal = AbortSignal.timeout(HELLO_TIMEOUT_MS);
    const { stream } = await this.opts.host.openStream(peerId, PROTOCOLS.hello, { signal, maxFrameBytes: 16 * 1024 });
    try {
      await stream.send({ cert: this.opts.ownCert() });
      const answer = (await stream.read(signal)) as HelloFrame | undefined;
      if (!answer || typeof answer !== 'object') throw new Error(`peer ${peerId} closed the hello without answering`);
      if (typeof answer.error === 'string') throw new Error(`peer ${peerId} refused us: ${answer.error}`);
      const claims = this.verify(answer.cert, peerId);
      await stream.close();
      return claims;
    } catch (error) {
      stream.abort(error as Error);
      throw error;
    }
  }

  private async answerHello(stream: FramedStream, remotePeer: string): Promise<void> {
    const frame = (await stream.read(AbortSignal.timeout(HELLO_TIMEOUT_MS))) as HelloFrame | undefined;
    try {
      this.verify(frame?.cert, remotePeer);
    } catch (error) {
      this.opts.log?.('warn', `hello from ${remotePeer} refused: ${(error as Error).message}`);
      await stream.send({ error: (error as Error).message });
      await stream.close();
      return;
    }
    await stream.send({ cert: this.opts.ownCert() });
    await stream.close();
  }

  private verify(cert: unknown, peerId: string): MembershipClaims {
    if (typeof cert !== 'string') throw new Error('no membership certificate presented');
    const claims = this.opts.verifier.verify(cert, { clusterId: this.opts.clusterId, expectedPeerId: peerId });
    if (this.opts.isDenied(claims.nodeId, peerId)) throw new Error(`node ${claims.nodeId} was removed from the swarm`);
    this.members.set(peerId, claims);
    return claims;
  }
}
