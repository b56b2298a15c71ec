#!/usr/bin/env node
// The `swarmd` command (see runCommand in cli/launch.mjs).
import { runCommand } from '../launch.mjs';

runCommand('swarmd', process.argv.slice(2));
