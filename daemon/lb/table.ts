// The endpoint table as it travels: the leader puts it in every heartbeat response (and its own node builds it from
// the store), for every service with published ports. Small on purpose: IDs, addresses, ports, no specs. A worker
// validates what it receives (it comes from the network) and keeps the last good table.
import { portLabel } from '../api/services.ts';
import { BALANCING_ALGORITHMS, type BalancingAlgorithm, parseAddress } from './endpoints.ts';

export interface TablePort {
  published: number;
  protocol: 'tcp' | 'udp';
  mode: 'ingress' | 'host';
  proxyProtocol: boolean;
}

export { portLabel };

export interface TableEndpoint {
  taskId: string;
  nodeId: string;
  /** The libp2p PeerId of the task's node: where the mesh hop goes. */
  peerId: string;
  /** host:port, reachable from the task's node. */
  address: string;
}

export interface TableService {
  serviceId: string;
  serviceName: string;
  algorithm: BalancingAlgorithm;
  ports: TablePort[];
  /** Running, ready (healthy when checked), meant to run, with an address. */
  endpoints: TableEndpoint[];
  /** Task IDs being stopped: open connections finish, no new ones. */
  draining: string[];
}

export const TABLE_LIMITS = { services: 1024, portsPerService: 64, endpointsPerService: 4096, idChars: 128 };

const isId = (value: unknown): value is string =>
  typeof value === 'string' && value.length > 0 && value.length <= TABLE_LIMITS.idChars;
const isPort = (value: unknown): value is number =>
  typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 65535;

/** The table from a heartbeat response; entries that do not check out are dropped (and counted), never thrown. */
export function validateTable(value: unknown): { services: TableService[]; dropped: number } {
  const services: TableService[] = [];
  let dropped = 0;
  if (!Array.isArray(value)) return { services, dropped: value === undefined ? 0 : 1 };
  for (const raw of value.slice(0, TABLE_LIMITS.services)) {
    const service = validateService(raw);
    if (service) services.push(service);
    else dropped++;
  }
  return { services, dropped };
}

function validateService(raw: unknown): TableService | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const r = raw as Record<string, unknown>;
  if (!isId(r.serviceId) || !isId(r.serviceName)) return undefined;
  if (!BALANCING_ALGORITHMS.includes(r.algorithm as BalancingAlgorithm)) return undefined;
  if (!Array.isArray(r.ports) || !Array.isArray(r.endpoints) || !Array.isArray(r.draining)) return undefined;
  const ports: TablePort[] = [];
  for (const p of r.ports.slice(0, TABLE_LIMITS.portsPerService) as Record<string, unknown>[]) {
    if (typeof p !== 'object' || p === null || !isPort(p.published)) return undefined;
    if (p.mode !== 'ingress' && p.mode !== 'host') return undefined;
    // Left out by a leader from before UDP: tcp.
    const protocol = p.protocol ?? 'tcp';
    if (protocol !== 'tcp' && protocol !== 'udp') return undefined;
    ports.push({ published: p.published, protocol, mode: p.mode, proxyProtocol: p.proxyProtocol === true });
  }
  const endpoints: TableEndpoint[] = [];
  for (const e of r.endpoints.slice(0, TABLE_LIMITS.endpointsPerService) as Record<string, unknown>[]) {
    if (typeof e !== 'object' || e === null || !isId(e.taskId) || !isId(e.nodeId) || !isId(e.peerId)) continue;
    if (typeof e.address !== 'string' || e.address.length > 64) continue;
    try {
      parseAddress(e.address);
    } catch {
      continue;
    }
    endpoints.push({ taskId: e.taskId, nodeId: e.nodeId, peerId: e.peerId, address: e.address });
  }
  const draining = (r.draining.slice(0, TABLE_LIMITS.endpointsPerService) as unknown[]).filter(isId);
  return {
    serviceId: r.serviceId,
    serviceName: r.serviceName,
    algorithm: r.algorithm as BalancingAlgorithm,
    ports,
    endpoints,
    draining,
  };
}

/**
 * Removes from `drained` (a set of task IDs, or a map keyed by them) the tasks the table no longer names (neither as
 * endpoints nor as draining) and returns them: those are gone for good, so whoever kept them excluded can forget them.
 */
export function forgetGone(
  drained: Pick<Set<string>, 'keys' | 'delete' | 'size'>,
  table: readonly TableService[],
): string[] {
  if (drained.size === 0) return [];
  const named = new Set<string>();
  for (const service of table) {
    for (const e of service.endpoints) named.add(e.taskId);
    for (const id of service.draining) named.add(id);
  }
  const gone = [...drained.keys()].filter((taskId) => !named.has(taskId));
  for (const taskId of gone) drained.delete(taskId);
  return gone;
}
