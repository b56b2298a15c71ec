// Objects the control API returns and the CLI prints. Shared by daemon and cli; no behaviour here.

export type NodeRole = 'manager' | 'worker';
export type NodeAvailability = 'active' | 'pause' | 'drain';
export type NodeState = 'ready' | 'down' | 'unknown';

export interface NodeDescription {
  hostname: string;
  platform: { os: string; arch: string };
  /** Engine / runtime versions and resources as the node reported them. */
  resources: {
    nanoCpus: number;
    memoryBytes: number;
    /** Accelerators found at start, each by the ID a runtime is given (an NVIDIA UUID, a CDI name...). */
    gpus?: { id: string; model?: string; memoryBytes?: number }[];
    /** Named resources the operator declared (--node-resource), e.g. fpga: [fpga-0, fpga-1]. */
    generic?: { kind: string; ids: string[] }[];
  };
  /**
   * TCP and UDP ports programs on the host (not this swarmd's published services) listen on, outside the ephemeral range,
   * as the node last read them: publishing one of them would fail there.
   */
  hostPorts?: HostPortInUse[];
  swarmdVersion: string;
}

export interface HostPortInUse {
  port: number;
  /** Left out: tcp (what nodes reported before UDP ports could be published). */
  protocol?: 'udp';
  /** "nginx (pid 812)", when the node could see which program holds it. */
  process?: string;
}

export function hostPortProtocol(use: HostPortInUse): 'tcp' | 'udp' {
  return use.protocol ?? 'tcp';
}

export interface ManagerStatus {
  /** Raft member state as the leader sees it. */
  leader: boolean;
  reachability: 'reachable' | 'unreachable' | 'unknown';
  raftRole: 'voter' | 'learner' | 'none';
}

export interface SwarmNode {
  id: string;
  /** libp2p PeerId: the key the node proves on every connection. */
  peerId: string;
  role: NodeRole;
  availability: NodeAvailability;
  labels: Record<string, string>;
  description: NodeDescription;
  /** Multiaddrs the node can be reached at. */
  addresses: string[];
  status: { state: NodeState; message: string; since: string };
  /** This node's own heartbeat period, or null for the swarm's default. */
  heartbeatPeriodMs: number | null;
  managerStatus: ManagerStatus | null;
  /** Raft index of the last change (optimistic concurrency for updates). */
  version: number;
  createdAt: string;
  updatedAt: string;
}

export interface SwarmInfo {
  nodeId: string;
  clusterId: string;
  role: NodeRole;
  /** Whether this node is the Raft leader (managers only). */
  isLeader: boolean;
  leaderNodeId: string | null;
  managers: number;
  nodes: number;
  caFingerprint: string;
  dataDir: string;
  listenAddrs: string[];
  meshEncryption: 'noise' | 'tls';
  raft: { term: number; commit: number; applied: number } | null;
}

export interface JoinTokens {
  worker: string;
  manager: string;
}

/** Every API error has this body, with a status code that says what kind of error it is. */
export interface ApiErrorBody {
  error: string;
  /** The field of the request that was wrong, when one was. */
  field?: string;
}
