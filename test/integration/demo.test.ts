// `npm run demo -- --exit`: the README's first command goes through every step on a fresh 3-node swarm and
// cleans up after itself.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

describe('npm run demo', () => {
  it('deploys, balances over three healthy tasks, rolls out v2, and removes its swarm', () => {
    const result = spawnSync(process.execPath, [resolve(import.meta.dirname, '../../cli/demo.ts'), '--exit'], {
      encoding: 'utf8',
      timeout: 170_000,
    });
    const out = `${result.stdout}${result.stderr}`;
    expect(result.status, `${out}\n${result.stderr}`).toBe(0);
    // The manager's port alone answers from every task: three task ports among its three answers.
    const v1 = [...out.matchAll(/GET http:\/\/127\.0\.0\.1:\d+\/ {2}-> {2}hello from v1 \(task port (\d+)/g)].map(
      (m) => m[1],
    );
    expect(new Set(v1).size, out).toBe(3);
    expect(out).toMatch(/Running \(healthy\)/);
    expect(out).toMatch(/web: completed: 3\/3 tasks on the new spec/);
    expect(out).toMatch(/-> {2}hello from v2/);
    expect(out).not.toMatch(/failed:/);
    const dataDir = /export SWARM_HOST=(\S+)\/manager\/swarmd\.sock/.exec(out)?.[1];
    expect(dataDir).toBeDefined();
    expect(existsSync(dataDir!)).toBe(false);
    // The service was removed before the daemons stopped: none of its tasks is left running.
    const left = spawnSync('pgrep', ['-f', `swarmd-demo-task-${result.pid}`], { encoding: 'utf8' });
    expect(left.stdout.trim()).toBe('');
  }, 180_000);
});
