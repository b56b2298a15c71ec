// Seeded fault-injection runs of the Raft core (raft/sim): a few hundred seeds in CI; more with
// `npm run sim -- --seeds N`. Each seed draws partitions, drops, duplicates, delays, crashes that lose or
// tear unsynced writes, restarts, membership changes, leadership transfers and snapshot installs.
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeFailure, runSimulation, type SimResult } from '../../raft/sim/simulation.ts';

const CHAOS_TICKS = 800;

function runSeeds(nodes: 3 | 5, count: number, start = 1, faults?: Parameters<typeof runSimulation>[0]['faults']) {
  const failures: SimResult[] = [];
  let operations = 0;
  let inconclusive = 0;
  for (let seed = start; seed < start + count; seed++) {
    const result = runSimulation({ seed, nodes, chaosTicks: CHAOS_TICKS, ...(faults ? { faults } : {}) });
    operations += result.operations;
    if (result.linearizabilityTimedOut) inconclusive++;
    if (!result.ok) failures.push(result);
  }
  return { failures, operations, inconclusive };
}

describe('raft simulation', () => {
  it('150 seeds on 3 members: no safety, liveness, convergence or linearizability violation', () => {
    const { failures, operations, inconclusive } = runSeeds(3, 150);
    expect(failures.map(describeFailure)).toEqual([]);
    expect(operations).toBeGreaterThan(150 * 500); // the histories are not trivially small
    expect(inconclusive).toBeLessThanOrEqual(3);
  });

  it('75 seeds on 5 members: no violation', () => {
    const { failures, inconclusive } = runSeeds(5, 75, 1001);
    expect(failures.map(describeFailure)).toEqual([]);
    expect(inconclusive).toBeLessThanOrEqual(2);
  });

  it('catches a planted bug (votes granted without the log check) within 200 seeds', () => {
    let caught: SimResult | undefined;
    for (let seed = 1; seed <= 200 && !caught; seed++) {
      const result = runSimulation({
        seed,
        nodes: 3,
        chaosTicks: CHAOS_TICKS,
        faults: { grantVoteWithoutLogCheck: true },
      });
      if (!result.ok) caught = result;
    }
    expect(caught).toBeDefined();
    expect(['state machine safety', 'log matching', 'linearizability', 'convergence']).toContain(caught!.property);
    // The report has what a person needs to reproduce it.
    const report = describeFailure(caught!);
    expect(report).toContain(`seed ${caught!.seed}`);
    expect(report).toContain(`--seed-start ${caught!.seed} --seeds 1`);
    // Rerunning the seed reproduces the same violation.
    const again = runSimulation({
      seed: caught!.seed,
      nodes: 3,
      chaosTicks: CHAOS_TICKS,
      faults: { grantVoteWithoutLogCheck: true },
    });
    expect(again.property).toBe(caught!.property);
    expect(again.detail).toBe(caught!.detail);
  });

  it('catches a planted bug (commit without a quorum) within 200 seeds', () => {
    const { failures } = runSeeds(3, 200, 1, { commitWithoutQuorum: true });
    expect(failures.length).toBeGreaterThan(0);
  });

  it('is deterministic: the same seed gives the same run', () => {
    const a = runSimulation({ seed: 77, nodes: 3, chaosTicks: 300 });
    const b = runSimulation({ seed: 77, nodes: 3, chaosTicks: 300 });
    expect(a).toEqual(b);
  });
});

describe('npm run sim', () => {
  const cli = resolve(import.meta.dirname, '../../raft/sim/cli.ts');
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

  it('ends with one JSON line of totals and exits 0 when every seed passes', () => {
    const result = run('--seeds', '3', '--chaos-ticks', '200');
    expect(result.status).toBe(0);
    const summary = JSON.parse(result.stdout.trim().split('\n').at(-1)!);
    expect(summary).toMatchObject({ seedsRun: 3, nodes: 3, violations: 0 });
    expect(summary.operationsChecked).toBeGreaterThan(0);
  });

  it('prints the failing seed, the property and a trace, and exits 1', () => {
    const result = run('--seeds', '40', '--plant', 'vote-without-log-check', '--chaos-ticks', '800');
    expect(result.status).toBe(1);
    expect(result.stdout).toMatch(/seed \d+ \(3 nodes\) violated /);
    expect(result.stdout).toContain('last events:');
    const summary = JSON.parse(result.stdout.trim().split('\n').at(-1)!);
    expect(summary.violations).toBeGreaterThan(0);
  });

  it('rejects bad arguments with a clear message', () => {
    const bad = run('--nodes', '4');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('--nodes must be 3 or 5');
    const unknown = run('--bogus');
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/bogus/);
  });
});
