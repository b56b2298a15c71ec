// What the load balancer's data plane is told about a service: its tasks and where each listens. The control plane
// (store watch, task health, published ports) builds these; nothing in daemon/lb/ reads the store itself.
import { isIP } from 'node:net';

export type TaskId = string;

export type BalancingAlgorithm = 'round-robin' | 'least-connections' | 'p2c';

export const BALANCING_ALGORITHMS: readonly BalancingAlgorithm[] = ['round-robin', 'least-connections', 'p2c'];

export interface Endpoint {
  taskId: TaskId;
  /** The node the task runs on; equal to the local node's ID means "connect directly". */
  nodeId: string;
  /** host:port reachable from that node, e.g. `10.0.0.7:8080` or `[fd00::7]:8080`. */
  address: string;
}

export interface ServiceEndpoints {
  serviceId: string;
  serviceName: string;
  algorithm: BalancingAlgorithm;
  /** Send a PROXY protocol v2 header to the backend first, so it sees the client's address. */
  proxyProtocol: boolean;
  /** Running and healthy tasks only; the control plane leaves the others out. */
  endpoints: readonly Endpoint[];
  /** Tasks being stopped (rolling update, scale down): kept for their open connections, given no new ones. */
  draining: ReadonlySet<TaskId> | readonly TaskId[];
}

export function isDraining(service: ServiceEndpoints, taskId: TaskId): boolean {
  const draining = service.draining;
  return draining instanceof Set ? draining.has(taskId) : (draining as readonly TaskId[]).includes(taskId);
}

export interface HostPort {
  host: string;
  port: number;
}

/** Splits `host:port` or `[v6]:port`; throws on anything else, so a bad table entry fails loudly where it is built. */
export function parseAddress(address: string): HostPort {
  let host: string;
  let portText: string;
  if (address.startsWith('[')) {
    const close = address.indexOf(']');
    if (close < 0 || address[close + 1] !== ':') throw new Error(`bad endpoint address ${JSON.stringify(address)}`);
    host = address.slice(1, close);
    portText = address.slice(close + 2);
    if (isIP(host) !== 6) throw new Error(`bad IPv6 address in ${JSON.stringify(address)}`);
  } else {
    const colon = address.lastIndexOf(':');
    if (colon <= 0) throw new Error(`bad endpoint address ${JSON.stringify(address)}`);
    host = address.slice(0, colon);
    portText = address.slice(colon + 1);
    // An unbracketed IPv6 address is ambiguous (is the last group the port?), so it is refused.
    if (host.includes(':')) throw new Error(`IPv6 address must be bracketed: ${JSON.stringify(address)}`);
  }
  if (!/^\d{1,5}$/.test(portText)) throw new Error(`bad port in ${JSON.stringify(address)}`);
  const port = Number(portText);
  if (port < 1 || port > 65535) throw new Error(`port out of range in ${JSON.stringify(address)}`);
  return { host, port };
}

export function formatAddress(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
