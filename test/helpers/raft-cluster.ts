// A small key-value state machine and helpers to run RaftNodes in one process, for driver tests.
import { RaftNode, type RaftNodeOptions, type StateMachine } from '../../raft/driver/raft-node.ts';
import { MemoryNetwork } from '../../raft/driver/transport.ts';
import { MemoryStorage } from '../../raft/storage/memory-storage.ts';
import type { RaftStorage } from '../../raft/storage/types.ts';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class KvStateMachine implements StateMachine {
  data = new Map<string, string>();

  static put(key: string, value: string): Uint8Array {
    return encoder.encode(JSON.stringify({ key, value }));
  }

  apply(command: Uint8Array): unknown {
    const { key, value } = JSON.parse(decoder.decode(command)) as { key: string; value: string };
    this.data.set(key, value);
    return 'ok';
  }

  snapshot(): Uint8Array {
    return encoder.encode(JSON.stringify([...this.data]));
  }

  restore(data: Uint8Array): void {
    this.data = new Map(JSON.parse(decoder.decode(data)) as [string, string][]);
  }
}

export async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface ClusterOptions {
  network?: MemoryNetwork;
  storages?: Map<string, RaftStorage>;
  snapshotEvery?: number;
  requestTimeoutMs?: number;
}

export async function startCluster(ids: string[], opts: ClusterOptions = {}) {
  const network = opts.network ?? new MemoryNetwork();
  const storages = opts.storages ?? new Map(ids.map((id) => [id, new MemoryStorage()] as [string, RaftStorage]));
  const machines = new Map<string, KvStateMachine>();
  const nodes: RaftNode[] = [];
  const options = (id: string, bootstrap: boolean): RaftNodeOptions => {
    const machine = new KvStateMachine();
    machines.set(id, machine);
    let storage = storages.get(id);
    if (!storage) {
      storage = new MemoryStorage();
      storages.set(id, storage);
    }
    return {
      id,
      storage,
      transport: network.transport(id),
      stateMachine: machine,
      tickMs: 10,
      ...(bootstrap ? { bootstrap: { voters: ids, learners: [] } } : {}),
      ...(opts.snapshotEvery ? { snapshotEvery: opts.snapshotEvery } : {}),
      ...(opts.requestTimeoutMs ? { requestTimeoutMs: opts.requestTimeoutMs } : {}),
    };
  };
  for (const id of ids) nodes.push(await RaftNode.start(options(id, true)));
  const cluster = {
    nodes,
    machines,
    network,
    async leader(): Promise<RaftNode> {
      let found: RaftNode | undefined;
      await waitFor(() => {
        found = cluster.nodes.find((n) => n.isLeader());
        return found !== undefined;
      });
      return found!;
    },
    /** Starts a member again on the storage it had (a clean restart). */
    async restart(id: string): Promise<RaftNode> {
      const node = await RaftNode.start(options(id, true));
      cluster.nodes = cluster.nodes.filter((n) => n.id !== id).concat(node);
      return node;
    },
    /** Starts a new, empty member that waits to be added. */
    async join(id: string): Promise<RaftNode> {
      const node = await RaftNode.start(options(id, false));
      cluster.nodes = cluster.nodes.concat(node);
      return node;
    },
  };
  return cluster;
}
