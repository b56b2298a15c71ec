#!/usr/bin/env node
// The `swarm` command (see runCommand in cli/launch.mjs).
import { runCommand } from '../launch.mjs';

runCommand('swarm', process.argv.slice(2));
