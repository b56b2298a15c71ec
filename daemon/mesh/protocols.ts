// Protocol IDs of the swarm mesh, and who may open them.

export const PROTOCOLS = {
  /** Open to anyone: how a new node presents a join token and gets its certificate. */
  join: '/swarmd/join/1.0.0',
  /** Open to anyone: mutual exchange of membership certificates; nothing else is served before it. */
  hello: '/swarmd/hello/1.0.0',
  /** Managers only: Raft messages. */
  raft: '/swarmd/raft/1.0.0',
  /** Managers only: control API requests forwarded to the leader. */
  control: '/swarmd/control/1.0.0',
  /** Members: heartbeats (and later task assignments) between a node and the leader. */
  dispatcher: '/swarmd/dispatcher/1.0.0',
  /** Managers only: "your tasks changed, report now" from the leader to a node (assignments without delay). */
  nudge: '/swarmd/nudge/1.0.0',
  /** Managers only: a task's logs, read from the node that runs it. */
  logs: '/swarmd/logs/1.0.0',
  /**
   * Members: the load balancer's mesh hop. One long-lived stream per pair of nodes, carrying HTTP/2 (one CONNECT
   * stream per forwarded client connection, daemon/lb/tunnel.ts); inside each, a small header, a status byte, then
   * the connection's bytes (daemon/lb/remote.ts). Every node serves it (ingress on any node, tasks on any node).
   */
  lb: '/swarmd/lb/2',
  /**
   * Members: a ticket for one connection to the node's load balancer data path (a direct TLS connection carrying a
   * tunnel, daemon/lb/data-path.ts): its port and a one-time key. Asked before each tunnel is opened.
   */
  lbTicket: '/swarmd/lb-ticket/1',
} as const;

export const MANAGER_ONLY = new Set<string>([PROTOCOLS.raft, PROTOCOLS.control, PROTOCOLS.logs, PROTOCOLS.nudge]);
