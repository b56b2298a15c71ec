// The managers' replicated store: transactions apply whole or not at all, versions are Raft indexes,
// and a snapshot restores the same state.
import { describe, expect, it } from 'vitest';
import { ClusterStore, encodeTransaction, put, type StoreEvent } from '../../daemon/manager/store/store.ts';

const tx = (ops: Parameters<typeof encodeTransaction>[0]['ops']) =>
  encodeTransaction({ ops, at: '2026-01-01T00:00:00Z' });

describe('ClusterStore', () => {
  it('stamps objects with the Raft index and applies optimistic concurrency', () => {
    const store = new ClusterStore();
    expect(store.apply(tx([put('nodes', { id: 'a', version: 0, name: 'x' }, 'absent')]), 5)).toEqual({
      ok: true,
      index: 5,
    });
    expect(store.get('nodes', 'a')).toMatchObject({ id: 'a', version: 5 });
    const stale = store.apply(tx([put('nodes', { id: 'a', version: 0, name: 'y' }, 4)]), 6);
    expect(stale).toEqual({ ok: false, error: 'nodes/a changed meanwhile (version 5, expected 4); retry' });
    expect(store.get<{ id: string; version: number; name: string }>('nodes', 'a')?.name).toBe('x');
    expect(store.apply(tx([put('nodes', { id: 'a', version: 0, name: 'y' }, 5)]), 7)).toMatchObject({ ok: true });
  });

  it('applies a transaction whole or not at all', () => {
    const store = new ClusterStore();
    store.apply(tx([put('nodes', { id: 'a', version: 0 })]), 1);
    const result = store.apply(
      tx([put('nodes', { id: 'b', version: 0 }), { kind: 'delete', table: 'nodes', id: 'a', expectVersion: 99 }]),
      2,
    );
    expect(result.ok).toBe(false);
    expect(store.get('nodes', 'b')).toBeUndefined();
    expect(store.get('nodes', 'a')).toBeDefined();
  });

  it('reports malformed commands as failed transactions instead of throwing', () => {
    const store = new ClusterStore();
    expect(store.apply(new Uint8Array([0xc1]), 1)).toMatchObject({ ok: false });
    expect(store.apply(tx([{ kind: 'put', table: 'bogus' as 'nodes', object: { id: 'a', version: 0 } }]), 2)).toEqual({
      ok: false,
      error: 'unknown table bogus',
    });
  });

  it('tells watchers what changed, and a snapshot restores the same state', () => {
    const store = new ClusterStore();
    const seen: StoreEvent[] = [];
    store.watch((events) => seen.push(...events));
    store.apply(
      tx([
        { kind: 'setCluster', cluster: { id: 'c1' }, expectVersion: 'absent' },
        put('nodes', { id: 'a', version: 0 }),
      ]),
      3,
    );
    expect(seen.map((e) => `${e.table}:${e.kind}:${e.id}`)).toEqual(['cluster:put:cluster', 'nodes:put:a']);
    const copy = new ClusterStore();
    copy.restore(store.snapshot());
    expect(copy.getCluster()).toEqual({ id: 'c1', version: 3 });
    expect(copy.list('nodes')).toEqual(store.list('nodes'));
    expect(copy.appliedIndex).toBe(3);
  });
});
