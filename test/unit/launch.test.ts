import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const launcher = resolve(import.meta.dirname, '../../cli/launch.mjs');

describe('cli/launch.mjs', () => {
  it('runs a TypeScript script under Node >= 22 and passes arguments and exit code through', () => {
    const dir = mkdtempSync(join(tmpdir(), 'launch-'));
    const script = join(dir, 'probe.ts');
    writeFileSync(
      script,
      'const major: number = Number(process.versions.node.split(".")[0]);\n' +
        'console.log(JSON.stringify({ major, args: process.argv.slice(2) }));\n' +
        'process.exit(7);\n',
    );
    const result = spawnSync(process.execPath, [launcher, script, 'a', 'b c'], {
      encoding: 'utf8',
      env: { ...process.env, SWARMD_SKIP_INSTALL: '1' },
    });
    expect(result.status).toBe(7);
    const probe = JSON.parse(result.stdout.trim());
    expect(probe.major).toBeGreaterThanOrEqual(22);
    expect(probe.args).toEqual(['a', 'b c']);
  });

  it('refuses to run without a script and says how to call it', () => {
    const result = spawnSync(process.execPath, [launcher], { encoding: 'utf8' });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('usage: node cli/launch.mjs SCRIPT');
  });
});
