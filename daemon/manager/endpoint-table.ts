// The leader's side of the load balancer: from the store to the endpoint table every node balances over (see
// daemon/lb/table.ts). Pure, so it runs for each heartbeat answer without side effects.
import { randomBytes } from 'node:crypto';
import type { Service, Task } from '../api/services.ts';
import type { TableService } from '../lb/table.ts';
import { isReady } from './updater.ts';

export function buildEndpointTable(
  services: readonly Service[],
  tasks: readonly Task[],
  peerOf: (nodeId: string) => string | undefined,
): TableService[] {
  const byService = new Map<string, Task[]>();
  for (const task of tasks) {
    const list = byService.get(task.serviceId);
    if (list === undefined) byService.set(task.serviceId, [task]);
    else list.push(task);
  }
  const table: TableService[] = [];
  for (const service of services) {
    const ports = service.spec.endpoint?.ports ?? [];
    if (ports.length === 0) continue;
    const endpoints: TableService['endpoints'] = [];
    const draining: string[] = [];
    for (const task of byService.get(service.id) ?? []) {
      const peerId = task.nodeId ? peerOf(task.nodeId) : undefined;
      if (task.desiredState === 'running' && isReady(task) && task.status.address && peerId && task.nodeId) {
        endpoints.push({ taskId: task.id, nodeId: task.nodeId, peerId, address: task.status.address });
      } else if (task.desiredState === 'shutdown' && task.status.state === 'running') {
        draining.push(task.id);
      }
    }
    table.push({
      serviceId: service.id,
      serviceName: service.spec.name,
      algorithm: service.spec.endpoint.algorithm,
      ports: ports.map((p) => ({
        published: p.published,
        protocol: p.protocol,
        mode: p.mode,
        proxyProtocol: p.proxyProtocol,
      })),
      endpoints,
      draining,
    });
  }
  return table;
}

/**
 * The table as of the last store change, with a version that changes only when its content does: a node sends the
 * version it has with each heartbeat, and the answer carries the table only when it differs.
 */
export class EndpointTableCache {
  private readonly build: () => TableService[];
  private built: { table: TableService[]; version: string } | null = null;
  /** The content of the last table built, to keep its version when a store change left the table as it was. */
  private json = '';
  private serial = 0;
  /** Versions of another manager (an earlier leader, or this one before a restart) never match ours. */
  private readonly epoch = randomBytes(6).toString('hex');

  constructor(build: () => TableService[]) {
    this.build = build;
  }

  /** The store changed: the next current() rebuilds. */
  invalidate(): void {
    this.built = null;
  }

  current(): { table: TableService[]; version: string } {
    if (this.built === null) {
      const table = this.build();
      const json = JSON.stringify(table);
      if (json !== this.json) {
        this.json = json;
        this.serial++;
      }
      this.built = { table, version: `${this.epoch}.${this.serial}` };
    }
    return this.built;
  }
}
