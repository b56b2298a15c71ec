#!/usr/bin/env node
// The `swarm` command: runs cli/swarm.ts under Node >= 22 (see cli/launch.mjs for why and how).
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureDependencies, ensureModernNode, envFor } from '../launch.mjs';

const cliDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const nodeBin = ensureModernNode();
ensureDependencies(nodeBin);
const result = spawnSync(nodeBin, [join(cliDir, 'swarm.ts'), ...process.argv.slice(2)], {
  stdio: 'inherit',
  env: envFor(nodeBin),
});
if (result.signal) process.kill(process.pid, result.signal);
process.exit(result.status ?? 1);
