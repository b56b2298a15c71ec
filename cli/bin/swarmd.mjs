#!/usr/bin/env node
// The `swarmd` command: runs the bundle from `npm run build` (dist/swarmd.mjs) when there is one, else
// cli/swarmd.ts, under Node >= 22 (see cli/launch.mjs for why and how). The bundle uses far less memory.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureDependencies, ensureModernNode, envFor } from '../launch.mjs';

const cliDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const nodeBin = ensureModernNode();
ensureDependencies(nodeBin);
const bundle = join(cliDir, '..', 'dist', 'swarmd.mjs');
// A small young generation: an idle daemon needs little, and it keeps resident memory down on small devices.
const entry = existsSync(bundle) ? ['--max-semi-space-size=1', bundle] : [join(cliDir, 'swarmd.ts')];
const result = spawnSync(nodeBin, [...entry, ...process.argv.slice(2)], {
  stdio: 'inherit',
  env: envFor(nodeBin),
});
if (result.signal) process.kill(process.pid, result.signal);
process.exit(result.status ?? 1);
