// The part of every node that keeps in touch with the managers: a heartbeat to the leader each period.
// The answer tells the node who the managers are, its current role, the denylist, and brings a fresh
// certificate when its role changed or its current one is past half its life.
import type { MembershipGate } from '../mesh/gate.ts';
import type { MeshHost } from '../mesh/host.ts';
import type { HeartbeatRequest, HeartbeatResponse } from '../mesh/messages.ts';
import { PROTOCOLS } from '../mesh/protocols.ts';
import type { KnownManager } from '../node-state.ts';

export interface AgentOptions {
  host: MeshHost;
  gate: MembershipGate;
  request: () => HeartbeatRequest;
  managers: () => KnownManager[];
  isManager: () => boolean;
  isLeader: () => boolean;
  /** What a heartbeat does, for the leader itself. */
  reportLocally: () => Promise<void>;
  onResponse: (response: Extract<HeartbeatResponse, { ok: true }>) => Promise<void> | void;
  onManagersLearned: (managers: KnownManager[]) => void;
  log: (level: 'info' | 'warn', message: string) => void;
}

export class Agent {
  private readonly opts: AgentOptions;
  private timer: NodeJS.Timeout | null = null;
  private periodMs = 1000;
  private leaderHint: string | null = null;
  private stopped = false;
  private failures = 0;

  constructor(opts: AgentOptions) {
    this.opts = opts;
  }

  start(): void {
    this.schedule(0);
  }

  /** Sends the next heartbeat right away (a task status changed), at most one extra in flight. */
  beatSoon(): void {
    if (this.stopped) return;
    if (this.beating) {
      this.beatAgain = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.beat(), delayMs);
  }

  private beating = false;
  private beatAgain = false;

  private async beat(): Promise<void> {
    this.beating = true;
    try {
      await this.sendHeartbeat();
      this.failures = 0;
    } catch (error) {
      this.failures++;
      if (this.failures === 1 || this.failures % 10 === 0) {
        this.opts.log('warn', `heartbeat failed (${this.failures}x): ${(error as Error).message}`);
      }
      this.leaderHint = null;
    }
    this.beating = false;
    const again = this.beatAgain;
    this.beatAgain = false;
    this.schedule(again ? 0 : this.periodMs);
  }

  private async sendHeartbeat(): Promise<void> {
    // The leader reports to nobody: it reads and writes its own tasks in the store directly.
    if (this.opts.isLeader()) {
      await this.opts.reportLocally();
      return;
    }
    const managers = this.opts.managers();
    // A lone manager has nobody to report to either.
    if (managers.length === 0 && this.opts.isManager()) return;
    if (managers.length === 0) throw new Error('no manager known');
    // Try the leader we know of first, then the others, so a leader change costs one round.
    const ordered = [...managers].sort(
      (a, b) => Number(b.nodeId === this.leaderHint) - Number(a.nodeId === this.leaderHint),
    );
    let lastError: Error | null = null;
    for (const manager of ordered) {
      try {
        const response = await this.ask(manager);
        this.opts.onManagersLearned(response.managers);
        if (response.ok) {
          this.leaderHint = response.leaderNodeId;
          this.periodMs = response.heartbeatPeriodMs;
          await this.opts.onResponse(response);
          return;
        }
        this.leaderHint = response.redirect;
        lastError = new Error(response.error);
        if (response.redirect) {
          const leader = response.managers.find((m) => m.nodeId === response.redirect);
          if (leader) {
            const again = await this.ask(leader);
            if (again.ok) {
              this.leaderHint = again.leaderNodeId;
              this.periodMs = again.heartbeatPeriodMs;
              await this.opts.onResponse(again);
              return;
            }
          }
        }
      } catch (error) {
        lastError = error as Error;
      }
    }
    throw lastError ?? new Error('no manager answered');
  }

  /**
   * One heartbeat to this manager, whatever this node believes about who leads (a forced recovery's leader that
   * told this manager it was left out: see Swarmd.onNudge). Its answer is taken as any leader's.
   */
  async reportTo(manager: KnownManager): Promise<void> {
    const response = await this.ask(manager);
    this.opts.onManagersLearned(response.managers);
    if (!response.ok) throw new Error(`manager ${manager.nodeId}: ${response.error}`);
    this.leaderHint = response.leaderNodeId;
    this.periodMs = response.heartbeatPeriodMs;
    await this.opts.onResponse(response);
  }

  /**
   * Says hello to a manager at its known addresses; when that fails (it moved: a new DHCP lease, a NAT
   * rebinding), asks the swarm's DHT where it is now and tries once more.
   */
  private async connect(manager: KnownManager): Promise<void> {
    try {
      await this.opts.gate.ensureHello(manager.peerId);
    } catch (error) {
      const found = await this.opts.host.findPeer(manager.peerId, AbortSignal.timeout(5000)).catch(() => []);
      const fresh = found.filter((addr) => !manager.addrs.some((known) => addr.startsWith(known)));
      if (fresh.length === 0) throw error;
      this.opts.log('info', `manager ${manager.nodeId} found at new addresses through the DHT: ${fresh.join(', ')}`);
      await this.opts.host.addPeerAddresses(manager.peerId, fresh);
      await this.opts.gate.ensureHello(manager.peerId);
    }
  }

  private async ask(manager: KnownManager): Promise<HeartbeatResponse> {
    await this.opts.host.addPeerAddresses(manager.peerId, manager.addrs);
    await this.connect(manager);
    const signal = AbortSignal.timeout(Math.max(2000, this.periodMs));
    const { stream } = await this.opts.host.openStream(manager.peerId, PROTOCOLS.dispatcher, { signal });
    try {
      await stream.send(this.opts.request());
      const answer = (await stream.read(signal)) as HeartbeatResponse | undefined;
      if (!answer || typeof answer !== 'object') throw new Error(`manager ${manager.nodeId} closed without answering`);
      await stream.close();
      return answer;
    } catch (error) {
      stream.abort(error as Error);
      throw error;
    }
  }
}
