// `swarm service update` flags over a current spec: scalars replace, --X-add/--X-rm edit lists and maps,
// --force redeploys, and every problem names the flag.
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../cli/command.ts';
import { updatedSpec } from '../../cli/commands/service-update.ts';
import type { ServiceSpec } from '../../daemon/api/services.ts';
import { serviceSpec, taskTemplate } from '../helpers/fixtures.ts';

const current: ServiceSpec = {
  ...serviceSpec(
    'web',
    { kind: 'replicated', replicas: 3 },
    {
      ...taskTemplate({
        runtime: 'docker',
        image: 'app:1',
        command: [],
        placement: { constraints: ['node.role==worker'] },
      }),
      env: { A: '1', B: '2' },
    },
  ),
  labels: { team: 'ops' },
};

function problem(flags: Record<string, string | boolean | string[]>): string {
  try {
    updatedSpec(current, flags);
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    return (error as Error).message;
  }
  throw new Error('accepted');
}

describe('service update flags', () => {
  it('applies scalars, list and map edits over the current spec, keeping everything else', () => {
    const spec = updatedSpec(current, {
      image: 'app:2',
      replicas: '5',
      'env-add': ['C=3', 'A=10'],
      'env-rm': ['B'],
      'constraint-add': ['node.labels.zone==edge'],
      'constraint-rm': ['node.role==worker'],
      'label-add': ['tier=web'],
      'limit-memory': '256m',
      'update-parallelism': '2',
      'update-order': 'start-first',
      'rollback-monitor': '10s',
    });
    expect(spec.task.image).toBe('app:2');
    expect(spec.mode).toEqual({ kind: 'replicated', replicas: 5 });
    expect(spec.task.env).toEqual({ A: '10', C: '3' });
    expect(spec.task.placement.constraints).toEqual(['node.labels.zone==edge']);
    expect(spec.labels).toEqual({ team: 'ops', tier: 'web' });
    expect(spec.task.resources.limits.memoryBytes).toBe(256 * 1024 ** 2);
    expect(spec.update).toMatchObject({ parallelism: 2, order: 'start-first', failureAction: 'pause' });
    expect(spec.rollback.monitorMs).toBe(10_000);
    expect(spec.task.restart).toEqual(current.task.restart);
  });

  it('--force bumps forceUpdate (a changed template: every task is replaced); no flags change nothing', () => {
    expect(updatedSpec(current, { force: true }).task.forceUpdate).toBe(1);
    const unchanged = updatedSpec(current, {});
    expect(unchanged.task).toEqual(current.task);
    expect([unchanged.mode, unchanged.labels, unchanged.update, unchanged.rollback]).toEqual([
      current.mode,
      current.labels,
      current.update,
      current.rollback,
    ]);
  });

  it('health flags add a check, change its timings, or remove it', () => {
    const checked = updatedSpec(current, { 'health-cmd': 'curl -f localhost', 'health-retries': '5' });
    expect(checked.task.healthcheck).toMatchObject({
      kind: 'cmd',
      command: ['/bin/sh', '-c', 'curl -f localhost'],
      retries: 5,
      intervalMs: 30_000,
    });
    const faster = updatedSpec({ ...current, task: checked.task }, { 'health-interval': '1s' });
    expect(faster.task.healthcheck).toMatchObject({ kind: 'cmd', retries: 5, intervalMs: 1000 });
    expect(updatedSpec({ ...current, task: checked.task }, { 'no-healthcheck': true }).task.healthcheck).toBeNull();
  });

  it('refuses bad values naming the flag', () => {
    expect(problem({ 'update-parallelism': '-1' })).toBe('invalid --update-parallelism "-1": must not be negative');
    expect(problem({ 'update-max-failure-ratio': '1.5' })).toBe(
      'invalid --update-max-failure-ratio "1.5": must be between 0 and 1',
    );
    expect(problem({ 'update-order': 'random' })).toMatch(/^invalid --update-order "random": unknown order "random"/);
    expect(problem({ 'rollback-failure-action': 'rollback' })).toMatch(/^invalid --rollback-failure-action "rollback"/);
    expect(problem({ 'update-delay': 'soon' })).toMatch(/^invalid --update-delay "soon"/);
    expect(problem({ 'health-cmd': 'x', 'health-http': '/' })).toMatch(/--health-cmd conflicts with --health-http/);
    expect(problem({ 'env-add': ['=1'] })).toBe('invalid --env-add "=1": expected KEY=VALUE');
  });
});
