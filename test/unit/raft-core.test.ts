// The pure Raft core, driven synchronously through the in-memory harness. Each test pins down one rule
// of the protocol; the simulator (test/simulation) covers their combinations under faults.
import { describe, expect, it } from 'vitest';
import { defaultRaftConfig, ProposalDroppedError, Raft } from '../../raft/core/raft.ts';
import { bytes, Harness } from '../helpers/raft-harness.ts';

const three = () => new Harness(['a', 'b', 'c']);

describe('raft core: elections', () => {
  it('a lone voter elects itself and commits its proposals', () => {
    const h = new Harness(['a']);
    h.elect('a');
    expect(h.leader()).toBe('a');
    h.get('a').raft.propose(bytes('x'));
    h.stabilize();
    expect(h.appliedData('a')).toEqual(['x']);
  });

  it('three members elect exactly one leader, and every member applies the same commands in order', () => {
    const h = three();
    h.elect('a');
    expect(h.leader()).toBe('a');
    for (const cmd of ['1', '2', '3']) h.get('a').raft.propose(bytes(cmd));
    h.stabilize();
    for (const id of ['a', 'b', 'c']) expect(h.appliedData(id)).toEqual(['1', '2', '3']);
    const roles = ['a', 'b', 'c'].map((id) => h.get(id).raft.status().role);
    expect(roles.filter((r) => r === 'leader')).toHaveLength(1);
  });

  it('elects someone by timeouts alone (randomized election timeouts)', () => {
    const h = three();
    for (let i = 0; i < 50 && h.leader() === null; i++) h.tickAll();
    expect(h.leader()).not.toBeNull();
  });

  it('refuses to vote for a candidate whose log is behind (§5.4.1)', () => {
    const h = three();
    h.elect('a');
    h.isolate('c');
    h.get('a').raft.propose(bytes('x'));
    h.stabilize();
    h.heal();
    // c missed the entry; b will not vote for it, so it cannot become leader.
    h.isolate('a');
    h.get('c').raft.campaign();
    h.stabilize();
    expect(h.get('c').raft.status().role).not.toBe('leader');
  });

  it('pre-vote: a member rejoining after isolation does not bump the term of a healthy cluster', () => {
    const h = three();
    h.elect('a');
    const term = h.get('a').raft.status().term;
    h.isolate('c');
    h.tick('c', 100); // c campaigns over and over in isolation
    h.stabilize();
    expect(h.get('c').raft.status().term).toBe(term); // pre-votes never raised it
    h.heal();
    h.tickAll(3);
    expect(h.leader()).toBe('a');
    expect(h.get('a').raft.status().term).toBe(term);
  });

  it('check-quorum: a leader cut off from the majority steps down within two election timeouts', () => {
    const h = three();
    h.elect('a');
    h.isolate('a');
    // Followers heard before the cut still count at the first check; by the second they do not.
    h.tick('a', 2 * defaultRaftConfig('a', Math.random).electionTicks);
    h.stabilize();
    expect(h.get('a').raft.status().role).toBe('follower');
  });

  it('leader lease: followers that hear from a live leader ignore a vote request with a higher term', () => {
    const h = three();
    h.elect('a');
    const term = h.get('a').raft.status().term;
    h.get('c').raft.step({
      type: 'Vote',
      from: 'c',
      to: 'b',
      term: term + 5,
      lastLogIndex: 100,
      lastLogTerm: term + 4,
      transfer: false,
    });
    h.stabilize();
    expect(h.get('b').raft.status().term).toBe(term);
    expect(h.leader()).toBe('a');
  });
});

describe('raft core: replication', () => {
  it('a new leader overwrites a follower’s conflicting uncommitted suffix', () => {
    const h = three();
    h.elect('a');
    h.isolate('a');
    // a appends entries nobody else gets.
    h.get('a').raft.propose(bytes('lost-1'));
    h.get('a').raft.propose(bytes('lost-2'));
    h.stabilize();
    h.heal();
    h.isolate('a');
    for (let i = 0; i < 100 && h.leader() !== 'b' && h.leader() !== 'c'; i++) h.tickAll();
    const newLeader = h.leader()!;
    expect(['b', 'c']).toContain(newLeader);
    h.get(newLeader).raft.propose(bytes('kept'));
    h.stabilize();
    h.heal();
    h.tickAll(3);
    for (const id of ['a', 'b', 'c']) expect(h.appliedData(id)).toEqual(['kept']);
  });

  it('a restarted member recovers its log and term from what it persisted', () => {
    const h = three();
    h.elect('a');
    h.get('a').raft.propose(bytes('x'));
    h.stabilize();
    const term = h.get('b').raft.status().term;
    const restarted = h.restart('b');
    expect(restarted.raft.status().term).toBe(term);
    h.stabilize(); // re-applies committed entries from its log
    expect(h.appliedData('b')).toEqual(['x']);
  });

  it('flow control: never more appends in flight to a follower than maxInflightMsgs', () => {
    const h = new Harness(['a', 'b', 'c'], { maxInflightMsgs: 2, maxSizePerMsg: 1 });
    h.elect('a');
    h.get('a').raft.propose(bytes('warm-up')); // followers move from probing to pipelined replication
    h.stabilize();
    h.drop('AppResp'); // nothing is acknowledged from now on, so the window can only fill
    const before = h.delivered.length;
    for (let i = 0; i < 20; i++) h.get('a').raft.propose(bytes(`v${i}`));
    h.stabilize();
    const appendsToB = h.delivered
      .slice(before)
      .filter((m) => m.type === 'App' && m.to === 'b' && m.entries.length > 0);
    expect(appendsToB.length).toBe(2);
  });

  it('refuses proposals while too much is uncommitted', () => {
    const h = new Harness(['a', 'b', 'c'], { maxUncommittedBytes: 10 });
    h.elect('a');
    h.isolate('a');
    h.get('a').raft.propose(bytes('123456'));
    expect(() => h.get('a').raft.propose(bytes('123456'))).toThrow(ProposalDroppedError);
  });

  it('followers forward proposals to the leader', () => {
    const h = three();
    h.elect('a');
    h.get('c').raft.propose(bytes('from-c'));
    h.stabilize();
    expect(h.appliedData('a')).toEqual(['from-c']);
  });

  it('a member with no known leader refuses a proposal at once', () => {
    const h = three();
    expect(() => h.get('b').raft.propose(bytes('x'))).toThrow(/no leader known/);
  });
});

describe('raft core: snapshots', () => {
  it('a follower behind the compacted log receives the snapshot in chunks and catches up', () => {
    const h = new Harness(['a', 'b', 'c'], { snapshotChunkBytes: 4 });
    h.elect('a');
    h.isolate('c');
    for (let i = 0; i < 10; i++) h.get('a').raft.propose(bytes(`v${i}`));
    h.stabilize();
    const leader = h.get('a').raft;
    const state = bytes('state-of-the-machine-after-10');
    leader.compact(leader.status().applied, state);
    h.heal();
    h.tickAll(3);
    const c = h.get('c');
    expect(c.lastSnapshot?.data).toEqual(state);
    const chunks = h.delivered.filter((m) => m.type === 'Snap' && m.to === 'c');
    expect(chunks.length).toBeGreaterThanOrEqual(Math.ceil(state.byteLength / 4));
    h.get('a').raft.propose(bytes('after'));
    h.stabilize();
    expect(h.appliedData('c')).toEqual(['after']);
    expect(c.raft.status().commit).toBe(leader.status().commit);
  });

  it('compaction requires the applied index', () => {
    const h = new Harness(['a']);
    h.elect('a');
    expect(() => h.get('a').raft.compact(999, bytes('x'))).toThrow(/applied index/);
  });
});

describe('raft core: reads', () => {
  it('ReadIndex on a follower returns the leader’s commit index after a quorum round', () => {
    const h = three();
    h.elect('a');
    h.get('a').raft.propose(bytes('x'));
    h.stabilize();
    h.get('b').raft.readIndex('r1');
    h.stabilize();
    expect(h.get('b').readStates).toEqual([{ index: h.get('a').raft.status().commit, readId: 'r1' }]);
  });

  it('a leader cut off from the quorum never answers a safe read', () => {
    const h = three();
    h.elect('a');
    h.isolate('a');
    h.get('a').raft.readIndex('r1');
    h.stabilize();
    h.tick('a', 2);
    h.stabilize();
    expect(h.get('a').readStates).toEqual([]);
  });

  it('lease reads are answered at once while the lease holds, and not after it lapses', () => {
    const h = new Harness(['a', 'b', 'c'], { readOnly: 'lease' });
    h.elect('a');
    h.tickAll(1); // a heartbeat round establishes the lease
    h.get('a').raft.readIndex('r1');
    h.stabilize();
    expect(h.get('a').readStates.map((r) => r.readId)).toEqual(['r1']);
    h.isolate('a');
    h.tick('a', 9); // no acknowledgements: the lease runs out before check-quorum deposes a
    h.get('a').raft.readIndex('r2');
    h.stabilize();
    expect(h.get('a').readStates.map((r) => r.readId)).toEqual(['r1']);
  });
});

describe('raft core: membership and leadership transfer', () => {
  it('adds a learner that replicates but never campaigns, promotes it, then removes a voter', () => {
    const h = three();
    h.elect('a');
    h.get('a').raft.propose(bytes('before'));
    h.stabilize();
    h.add('d');
    h.get('a').raft.proposeConfChange({ type: 'addLearner', node: 'd' });
    h.stabilize();
    h.tickAll(2);
    expect(h.appliedData('d')).toEqual(['before']);
    expect(h.get('d').raft.status().conf.learners).toEqual(['d']);
    h.tick('d', 100);
    h.stabilize();
    expect(h.get('d').raft.status().role).toBe('follower'); // learners never campaign

    h.get('a').raft.proposeConfChange({ type: 'addVoter', node: 'd' });
    h.stabilize();
    expect(h.get('a').raft.status().conf.voters).toEqual(['a', 'b', 'c', 'd']);

    h.get('a').raft.proposeConfChange({ type: 'remove', node: 'c' });
    h.stabilize();
    expect(h.get('a').raft.status().conf.voters).toEqual(['a', 'b', 'd']);
    h.isolate('c');
    h.get('a').raft.propose(bytes('after'));
    h.stabilize();
    expect(h.appliedData('d')).toEqual(['before', 'after']); // quorum of a, b, d without c
  });

  it('allows one membership change at a time', () => {
    const h = three();
    h.elect('a');
    h.isolate('a'); // keeps the first change uncommitted
    h.get('a').raft.proposeConfChange({ type: 'addLearner', node: 'd' });
    expect(() => h.get('a').raft.proposeConfChange({ type: 'addLearner', node: 'e' })).toThrow(/pending/);
  });

  it('a leader that removes itself steps down', () => {
    const h = three();
    h.elect('a');
    h.get('a').raft.proposeConfChange({ type: 'remove', node: 'a' });
    h.stabilize();
    expect(h.get('a').raft.status().role).toBe('follower');
    h.tickAll(30);
    expect(['b', 'c']).toContain(h.leader());
  });

  it('transfers leadership to a caught-up voter in the next term, and refuses proposals meanwhile', () => {
    const h = three();
    h.elect('a');
    const term = h.get('a').raft.status().term;
    h.isolate('c');
    h.get('a').raft.propose(bytes('x'));
    h.stabilize();
    h.heal();
    h.get('a').raft.transferLeadership('c');
    expect(() => h.get('a').raft.propose(bytes('y'))).toThrow(/transferred/);
    h.stabilize();
    expect(h.leader()).toBe('c');
    expect(h.get('c').raft.status().term).toBe(term + 1);
    expect(h.appliedData('c')).toEqual(['x']);
  });
});

describe('raft core: force-new-cluster', () => {
  it('a survivor of a lost majority becomes the only voter, keeps every entry it holds, and commits again', () => {
    const h = three();
    h.elect('a');
    h.get('a').raft.propose(bytes('1'));
    h.stabilize();
    // b and c are gone for good; what a wrote afterwards never reached a majority.
    h.isolate('b');
    h.isolate('c');
    h.get('a').raft.propose(bytes('2'));
    h.stabilize();
    expect(h.appliedData('a')).toEqual(['1']);
    const termBefore = h.get('a').raft.status().term;

    const forced = h.restart('a', {}, true);
    h.stabilize();
    expect(h.appliedData('a')).toEqual(['1', '2']);
    expect(forced.raft.status().conf).toEqual({ voters: ['a'], learners: [] });
    expect(forced.raft.status().term).toBeGreaterThan(termBefore);
    h.tick('a', 2 * defaultRaftConfig('a', Math.random).electionTicks);
    h.stabilize();
    expect(forced.raft.status().role).toBe('leader');
    forced.raft.propose(bytes('3'));
    h.stabilize();
    expect(h.appliedData('a')).toEqual(['1', '2', '3']);

    // The one-member membership is in the log: a normal restart keeps it.
    const again = h.restart('a');
    h.stabilize();
    expect(again.raft.status().conf).toEqual({ voters: ['a'], learners: [] });
    expect(h.appliedData('a')).toEqual(['1', '2', '3']);
  });

  it('a learner forced to start a new cluster becomes its voter', () => {
    const h = three();
    h.elect('a');
    h.add('d');
    h.get('a').raft.proposeConfChange({ type: 'addLearner', node: 'd' });
    h.stabilize();
    h.tickAll(2);
    expect(h.get('d').raft.status().conf.learners).toEqual(['d']);
    for (const id of ['a', 'b', 'c']) h.isolate(id);
    const forced = h.restart('d', {}, true);
    h.stabilize();
    expect(forced.raft.status().conf).toEqual({ voters: ['d'], learners: [] });
  });
});

describe('raft core: configuration', () => {
  it('rejects invalid settings with a message naming the setting', () => {
    const base = defaultRaftConfig('a', Math.random);
    expect(() => new Raft({ ...base, heartbeatTicks: 10, electionTicks: 10 }, null)).toThrow(/heartbeatTicks/);
    expect(() => new Raft({ ...base, maxInflightMsgs: 0 }, null)).toThrow(/maxInflightMsgs/);
    expect(() => new Raft({ ...base, readOnly: 'lease', checkQuorum: false }, null)).toThrow(/checkQuorum/);
  });
});
