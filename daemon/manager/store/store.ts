// The cluster state managers replicate with Raft: tables of versioned objects plus the cluster record.
//
// Every change is a transaction proposed through Raft and applied in log order on every manager. An
// object's `version` is the Raft index of its last change, so a writer that read version v can say
// "only if still v" and a concurrent change makes its transaction fail instead of being overwritten
// (optimistic concurrency, as in swarmkit). Apply is deterministic: times come from the proposer.
import { Packr } from 'msgpackr';
import type { StateMachine } from '../../../raft/driver/raft-node.ts';

export interface StoreObject {
  id: string;
  version: number;
}

/** The tables the store holds. Later features add theirs here. */
export const TABLES = ['nodes', 'services', 'tasks'] as const;
export type TableName = (typeof TABLES)[number];

export type StoreOp =
  | {
      kind: 'put';
      table: TableName;
      object: StoreObject;
      /** Apply only if the stored version is this; 'absent' = only if no such object exists. */
      expectVersion?: number | 'absent';
    }
  | { kind: 'delete'; table: TableName; id: string; expectVersion?: number }
  | { kind: 'setCluster'; cluster: Record<string, unknown>; expectVersion?: number | 'absent' };

/** A put of any object type (a helper, so object literals with their own fields type-check). */
export function put<T extends StoreObject>(table: TableName, object: T, expectVersion?: number | 'absent'): StoreOp {
  return { kind: 'put', table, object, ...(expectVersion === undefined ? {} : { expectVersion }) };
}

export interface Transaction {
  ops: StoreOp[];
  /** Proposer's wall clock (ISO 8601): what apply uses for timestamps, identical on every manager. */
  at: string;
}

export type TransactionResult = { ok: true; index: number } | { ok: false; error: string };

export interface StoreEvent {
  index: number;
  table: TableName | 'cluster';
  kind: 'put' | 'delete';
  id: string;
  object: StoreObject | Record<string, unknown> | null;
  previous: StoreObject | Record<string, unknown> | null;
}

const packr = new Packr({ useRecords: false, moreTypes: true });

export function encodeTransaction(tx: Transaction): Uint8Array {
  return packr.pack(tx);
}

export class ClusterStore implements StateMachine {
  private tables = new Map<TableName, Map<string, StoreObject>>(TABLES.map((t) => [t, new Map()]));
  private cluster: (Record<string, unknown> & { version: number }) | null = null;
  private readonly listeners = new Set<(events: StoreEvent[]) => void>();
  /** Raft index of the last applied transaction. */
  appliedIndex = 0;

  // ------------------------------------------------------------ reads (local; see daemon for linearizable)

  get<T extends StoreObject>(table: TableName, id: string): T | undefined {
    return this.tables.get(table)!.get(id) as T | undefined;
  }

  list<T extends StoreObject>(table: TableName): T[] {
    return [...this.tables.get(table)!.values()] as T[];
  }

  getCluster<T>(): (T & { version: number }) | null {
    return this.cluster as (T & { version: number }) | null;
  }

  /** Calls listener with the events of every applied transaction, in order. Returns an unsubscribe. */
  watch(listener: (events: StoreEvent[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ------------------------------------------------------------ StateMachine

  apply(command: Uint8Array, index: number): TransactionResult {
    this.appliedIndex = index;
    let tx: Transaction;
    try {
      tx = packr.unpack(command) as Transaction;
      if (!tx || !Array.isArray(tx.ops)) throw new Error('not a transaction');
    } catch (error) {
      return { ok: false, error: `malformed transaction: ${(error as Error).message}` };
    }
    // All preconditions first: a transaction applies whole or not at all.
    for (const op of tx.ops) {
      const conflict = this.checkPrecondition(op);
      if (conflict) return { ok: false, error: conflict };
    }
    const events: StoreEvent[] = [];
    for (const op of tx.ops) events.push(this.applyOp(op, index));
    for (const listener of this.listeners) {
      try {
        listener(events);
      } catch {
        // A listener's failure must not make managers diverge or stop applying.
      }
    }
    return { ok: true, index };
  }

  snapshot(): Uint8Array {
    const tables: Record<string, StoreObject[]> = {};
    for (const [name, table] of this.tables) tables[name] = [...table.values()];
    return packr.pack({ v: 1, appliedIndex: this.appliedIndex, cluster: this.cluster, tables });
  }

  restore(data: Uint8Array): void {
    const state = packr.unpack(data) as {
      v: number;
      appliedIndex: number;
      cluster: (Record<string, unknown> & { version: number }) | null;
      tables: Record<string, StoreObject[]>;
    };
    if (state.v !== 1) throw new Error(`store snapshot version ${state.v} is not supported`);
    this.cluster = state.cluster;
    this.appliedIndex = state.appliedIndex;
    this.tables = new Map(TABLES.map((t) => [t, new Map((state.tables[t] ?? []).map((o) => [o.id, o]))]));
    const events: StoreEvent[] = [
      { index: this.appliedIndex, table: 'cluster', kind: 'put', id: 'cluster', object: this.cluster, previous: null },
    ];
    for (const listener of this.listeners) listener(events);
  }

  // ------------------------------------------------------------ internals

  private checkPrecondition(op: StoreOp): string | null {
    if (op.kind === 'setCluster') {
      return versionConflict('cluster', this.cluster?.version, op.expectVersion);
    }
    if (!TABLES.includes(op.table)) return `unknown table ${String(op.table)}`;
    const id = op.kind === 'put' ? op.object?.id : op.id;
    if (typeof id !== 'string' || id === '') return `${op.table}: object without an id`;
    const current = this.tables.get(op.table)!.get(id);
    return versionConflict(`${op.table}/${id}`, current?.version, op.expectVersion);
  }

  private applyOp(op: StoreOp, index: number): StoreEvent {
    if (op.kind === 'setCluster') {
      const previous = this.cluster;
      this.cluster = { ...op.cluster, version: index };
      return { index, table: 'cluster', kind: 'put', id: 'cluster', object: this.cluster, previous };
    }
    const table = this.tables.get(op.table)!;
    if (op.kind === 'put') {
      const previous = table.get(op.object.id) ?? null;
      const object = { ...op.object, version: index };
      table.set(object.id, object);
      return { index, table: op.table, kind: 'put', id: object.id, object, previous };
    }
    const previous = table.get(op.id) ?? null;
    table.delete(op.id);
    return { index, table: op.table, kind: 'delete', id: op.id, object: null, previous };
  }
}

function versionConflict(
  what: string,
  current: number | undefined,
  expected: number | 'absent' | undefined,
): string | null {
  if (expected === undefined) return null;
  if (expected === 'absent') return current === undefined ? null : `${what} already exists`;
  if (current === undefined) return `${what} does not exist`;
  if (current !== expected) return `${what} changed meanwhile (version ${current}, expected ${expected}); retry`;
  return null;
}
