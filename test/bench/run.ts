// npm run bench -- NAME: runs one benchmark; the last line it prints is one JSON object with its figures.
import { benchFootprint } from './footprint.ts';
import { benchRaft } from './raft/bench.ts';

const benches: Record<string, () => Promise<Record<string, unknown>>> = {
  raft: benchRaft,
  footprint: benchFootprint,
  scheduler: async () => (await import('./scheduler.ts')).benchScheduler(),
  deploy: async () => (await import('./deploy.ts')).benchDeploy(),
  lb: async () => (await import('./lb.ts')).benchLb(),
  'lb-close': async () => (await import('./lb.ts')).benchLb('close'),
  'lb-udp': async () => (await import('./lb-udp.ts')).benchLbUdp(),
  update: async () => (await import('./update.ts')).benchUpdate(),
};

const name = process.argv[2];
if (!name || !(name in benches)) {
  process.stderr.write(`usage: npm run bench -- NAME   (NAME: ${Object.keys(benches).join(', ')})\n`);
  process.exit(2);
}
const result = await benches[name]!();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
