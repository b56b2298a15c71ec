// Bundles `swarmd` and `swarm` into dist/ with esbuild: one small set of ES modules, split so manager code
// loads only on managers, minified. Running the bundle instead of the TypeScript sources saves the type
// stripping and module loading memory (~50 MiB per process), which matters on small edge devices.
//
// Usage: npm run build [-- OUTDIR]   (default dist/)
import { copyFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { NATIVE_RELAY_ADDON } from '../daemon/lb/native/build.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export async function buildBundle(outdir: string = resolve(root, 'dist')): Promise<string> {
  await build({
    // Named, so that each lands at the top of outdir: the ingress thread is loaded from next to the module that
    // starts it (daemon/lb/ingress-threads.ts), which the bundle puts at the top too.
    entryPoints: {
      swarmd: resolve(root, 'cli/swarmd.ts'),
      swarm: resolve(root, 'cli/swarm.ts'),
      'ingress-thread': resolve(root, 'daemon/lb/ingress-thread.ts'),
    },
    outdir,
    bundle: true,
    splitting: true,
    minify: true,
    sourcemap: 'linked',
    platform: 'node',
    format: 'esm',
    target: 'node22',
    outExtension: { '.js': '.mjs' },
    // Native addons (ssh2's optional crypto and cpu-features, via dockerode) cannot be bundled; ssh2 loads them
    // inside try/catch and works without them, so a missing one is left out rather than failing the build.
    external: ['*.node'],
    // Some dependencies are CommonJS and call require(); give ES modules one.
    banner: {
      js: "import { createRequire as __swarmdRequire } from 'node:module'; const require = __swarmdRequire(import.meta.url);",
    },
    logLevel: 'warning',
  });
  // The load balancer's native relay, where it was built: native-relay.ts looks for it next to the bundle's modules.
  if (existsSync(NATIVE_RELAY_ADDON)) copyFileSync(NATIVE_RELAY_ADDON, join(outdir, 'relay.node'));
  return outdir;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const outdir = await buildBundle(process.argv[2] ? resolve(process.argv[2]) : undefined);
  process.stdout.write(`built ${outdir}/swarmd.mjs and ${outdir}/swarm.mjs\n`);
}
