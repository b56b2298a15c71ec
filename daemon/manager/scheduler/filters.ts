// The filter pipeline (DESIGN.md "Data flow" step 5), in its order: ready, availability, resources,
// accelerators, constraints, platform, max replicas per node, host-mode ports a host program holds. A service's tasks are identical, so instead of
// asking "does one more fit?" per task, capacity() says how many more of them a node takes, and the placement
// loop just counts that down. rejection() names the first filter a node fails, to explain unplaced tasks the
// way swarmkit does: counts per cause, most common first.
import { portLabel, type Task, type TaskTemplate } from '../../api/services.ts';
import type { ClusterState } from './cluster.ts';
import {
  allMatch,
  type NodeAttribute,
  type NodeConstraint,
  nodeAttribute,
  parseNodeConstraint,
} from './constraints.ts';

/** What one task of a group asks for, parsed once per group. */
export interface Demand {
  nanoCpus: number;
  memoryBytes: number;
  gpus: number;
  /** 0 = no limit. */
  maxPerNode: number;
  constraints: NodeConstraint[];
  spread: NodeAttribute[];
  /** Host-mode published ports, as "8080/tcp": the node must not have a host program on any of them. */
  hostPorts: readonly string[];
}

/** A task's host-mode published ports as the scheduler compares them with a node's (SchedulerNode.portsInUse). */
export function hostPortLabels(task: Pick<Task, 'hostPorts' | 'hostUdpPorts'>): string[] {
  return [
    ...(task.hostPorts ?? []).map((published) => portLabel({ published, protocol: 'tcp' })),
    ...(task.hostUdpPorts ?? []).map((published) => portLabel({ published, protocol: 'udp' })),
  ];
}

export function parseDemand(template: TaskTemplate, hostPorts: readonly string[] = []): Demand | { error: string } {
  const constraints: NodeConstraint[] = [];
  for (const text of template.placement.constraints) {
    const c = parseNodeConstraint(text);
    if (!c) return { error: `invalid placement constraint "${text}"` };
    constraints.push(c);
  }
  const spread: NodeAttribute[] = [];
  for (const descriptor of template.placement.spread) {
    const attribute = nodeAttribute(descriptor);
    if (!attribute) return { error: `invalid spread preference "${descriptor}"` };
    spread.push(attribute);
  }
  const r = template.resources.reservations;
  return {
    nanoCpus: Math.max(0, r.nanoCpus),
    memoryBytes: Math.max(0, r.memoryBytes),
    gpus: Math.max(0, Math.floor(r.gpus)),
    maxPerNode: Math.max(0, template.placement.maxReplicasPerNode),
    constraints,
    spread,
    hostPorts,
  };
}

// Causes, in filter order; their index is the slot in a counts array. Platform has no input yet
// (TaskTemplate carries no platform requirement), so nothing is counted against it.
export const NOT_READY = 0;
export const UNAVAILABLE = 1;
export const MEMORY = 2;
export const CPU = 3;
export const GPUS = 4;
export const CONSTRAINTS = 5;
export const PLATFORM = 6;
export const MAX_REPLICAS = 7;
export const HOST_PORT = 8;
export const CAUSES = 9;

const nodes = (n: number) => (n === 1 ? '1 node' : `${n} nodes`);
const MESSAGES: ((n: number) => string)[] = [
  (n) => `${nodes(n)} not ready`,
  (n) => `${nodes(n)} not available for new tasks`,
  (n) => `insufficient memory on ${nodes(n)}`,
  (n) => `insufficient CPU on ${nodes(n)}`,
  (n) => `insufficient GPUs on ${nodes(n)}`,
  (n) => `constraint mismatch on ${nodes(n)}`,
  (n) => `unsupported platform on ${nodes(n)}`,
  (n) => `max replicas per node reached on ${nodes(n)}`,
  (n) => `published port in use by the host on ${nodes(n)}`,
];

/**
 * How many more tasks of this demand node i takes, given the resources and GPUs still free there and the
 * service's tasks already on it (svcCount). Constraints are checked separately: they don't change.
 */
export function capacity(cluster: ClusterState, i: number, d: Demand, svcCount: number): number {
  let cap = Number.POSITIVE_INFINITY;
  if (d.memoryBytes > 0) cap = Math.min(cap, Math.floor((cluster.freeMem[i] as number) / d.memoryBytes));
  if (d.nanoCpus > 0) cap = Math.min(cap, Math.floor((cluster.freeCpu[i] as number) / d.nanoCpus));
  if (d.gpus > 0) cap = Math.min(cap, Math.floor((cluster.freeGpus[i] as string[]).length / d.gpus));
  if (d.maxPerNode > 0) cap = Math.min(cap, d.maxPerNode - svcCount);
  if (portTaken(cluster, i, d)) return 0;
  return Math.max(0, cap);
}

/** The first filter node i fails for one more task of this demand, or -1 when it passes them all. */
export function rejection(cluster: ClusterState, i: number, d: Demand, svcCount: number): number {
  const node = cluster.nodes[i]!;
  if (node.state !== 'ready') return NOT_READY;
  if (node.availability !== 'active') return UNAVAILABLE;
  if (d.memoryBytes > 0 && (cluster.freeMem[i] as number) < d.memoryBytes) return MEMORY;
  if (d.nanoCpus > 0 && (cluster.freeCpu[i] as number) < d.nanoCpus) return CPU;
  if (d.gpus > 0 && (cluster.freeGpus[i] as string[]).length < d.gpus) return GPUS;
  if (!allMatch(d.constraints, node)) return CONSTRAINTS;
  if (d.maxPerNode > 0 && svcCount >= d.maxPerNode) return MAX_REPLICAS;
  if (portTaken(cluster, i, d)) return HOST_PORT;
  return -1;
}

function portTaken(cluster: ClusterState, i: number, d: Demand): boolean {
  const inUse = cluster.nodes[i]!.portsInUse;
  return inUse !== undefined && d.hostPorts.some((port) => inUse.has(port));
}

/** "no suitable node (insufficient memory on 3 nodes; 2 nodes not available for new tasks)". */
export function explain(counts: ArrayLike<number>): string {
  const causes: number[] = [];
  for (let c = 0; c < CAUSES; c++) if ((counts[c] as number) > 0) causes.push(c);
  if (causes.length === 0) return 'no suitable node (no nodes in the swarm)';
  // Most common cause first; Array.prototype.sort is stable, so ties keep filter order.
  causes.sort((a, b) => (counts[b] as number) - (counts[a] as number));
  return `no suitable node (${causes.map((c) => MESSAGES[c]!(counts[c] as number)).join('; ')})`;
}
