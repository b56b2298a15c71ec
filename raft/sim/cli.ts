// npm run sim -- --seeds N [--seed-start S] [--nodes 3|5] [--plant BUG] [--chaos-ticks T] [--verbose]
//
// Runs seeded simulations of the Raft core and checks every safety property, liveness after healing, and
// linearizability of the client history. A failing seed prints the seed, the property, a short trace and
// how to rerun it, and the exit code is 1. The last line is one JSON object with the totals.
import { parseArgs } from 'node:util';
import { describeFailure, runSimulation } from './simulation.ts';

const PLANTABLE = {
  'vote-without-log-check': { grantVoteWithoutLogCheck: true },
  'commit-without-quorum': { commitWithoutQuorum: true },
} as const;

function fail(message: string): never {
  process.stderr.write(`sim: ${message}\n`);
  process.exit(2);
}

function positiveInt(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) fail(`--${name} must be a non-negative integer, got "${value}"`);
  return n;
}

let args: ReturnType<typeof parse>;
function parse() {
  return parseArgs({
    options: {
      seeds: { type: 'string' },
      'seed-start': { type: 'string' },
      nodes: { type: 'string' },
      plant: { type: 'string' },
      'chaos-ticks': { type: 'string' },
      verbose: { type: 'boolean' },
    },
    strict: true,
  });
}
try {
  args = parse();
} catch (error) {
  fail(error instanceof Error ? error.message : String(error));
}

const seeds = positiveInt('seeds', args.values.seeds, 100);
const seedStart = positiveInt('seed-start', args.values['seed-start'], 1);
const chaosTicks = positiveInt('chaos-ticks', args.values['chaos-ticks'], 1500);
const nodesArg = args.values.nodes ?? '3';
if (nodesArg !== '3' && nodesArg !== '5') fail(`--nodes must be 3 or 5, got "${nodesArg}"`);
const nodes = Number(nodesArg) as 3 | 5;
const plantName = args.values.plant;
if (plantName !== undefined && !(plantName in PLANTABLE)) {
  fail(`--plant must be one of ${Object.keys(PLANTABLE).join(', ')}, got "${plantName}"`);
}
const faults = plantName ? PLANTABLE[plantName as keyof typeof PLANTABLE] : undefined;

const started = Date.now();
let operations = 0;
let appliedEntries = 0;
let inconclusive = 0;
const violations: { seed: number; property: string }[] = [];
for (let seed = seedStart; seed < seedStart + seeds; seed++) {
  const result = runSimulation({ seed, nodes, chaosTicks, ...(faults ? { faults } : {}) });
  operations += result.operations;
  appliedEntries += result.appliedEntries;
  if (result.linearizabilityTimedOut) inconclusive++;
  if (!result.ok) {
    violations.push({ seed, property: result.property ?? 'unknown' });
    process.stdout.write(`${describeFailure(result)}\n`);
  } else if (args.values.verbose) {
    process.stdout.write(
      `seed ${seed}: ok, ${result.operations} ops, ${result.appliedEntries} applied (${result.settings})\n`,
    );
  }
}
const summary = {
  seedsRun: seeds,
  seedStart,
  nodes,
  planted: plantName ?? null,
  operationsChecked: operations,
  appliedEntries,
  linearizabilityInconclusive: inconclusive,
  violations: violations.length,
  failingSeeds: violations.slice(0, 20),
  seconds: Number(((Date.now() - started) / 1000).toFixed(1)),
};
process.stdout.write(`${JSON.stringify(summary)}\n`);
process.exitCode = violations.length > 0 ? 1 : 0;
