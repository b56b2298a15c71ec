// `swarm version` and `swarmd --version`: both name the one version constant; the client says so plainly when
// no daemon answers.
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SWARMD_VERSION } from '../../daemon/api/version.ts';
import { runSwarm } from '../helpers/swarm-cli.ts';

describe('versions', () => {
  it('swarm version prints the client version, and that no daemon answered', async () => {
    const run = await runSwarm('/nonexistent/swarmd.sock', ['version']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(new RegExp(`Client:\\s+${SWARMD_VERSION.replaceAll('.', '\\.')}\\n`));
    expect(run.stdout).toMatch(/Daemon:\s+\(not reachable\)/);
    const json = await runSwarm('/nonexistent/swarmd.sock', ['version', '--format', 'json']);
    expect(JSON.parse(json.stdout)).toEqual({ client: SWARMD_VERSION, daemon: null });
  });

  it('swarmd --version and swarmd version print it', () => {
    for (const arg of ['--version', 'version']) {
      const run = spawnSync(process.execPath, [resolve(import.meta.dirname, '../../cli/swarmd.ts'), arg], {
        encoding: 'utf8',
      });
      expect(run.status).toBe(0);
      expect(run.stdout).toBe(`swarmd ${SWARMD_VERSION}\n`);
    }
  });
});
