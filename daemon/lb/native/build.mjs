// Builds the native relay (relay.c, mux.c) into build/relay.node with the system's C compiler. No node-gyp: two C files
// against Node-API's headers (the node-api-headers package, from the Node project), whose ABI is stable across
// Node versions, so the addon built under one Node runs under any later one.
//
// cli/launch.mjs calls buildNativeRelay() before every npm script, which rebuilds only when a source is newer than
// the addon; without a compiler the load balancer relays in JavaScript instead (native-relay.ts says so at start).
// Run directly (`npm run build:native`), it rebuilds if needed and fails when it cannot build: CI does that.
// `--sanitize` builds it (always) with AddressSanitizer and UndefinedBehaviorSanitizer, to run the relay's tests
// under them: Node is not built with them, so their runtimes must be preloaded (README, Tests). A later plain
// build needs `touch relay.c` first, or the sanitized addon stays.
//
// Plain JavaScript, standard library only: it runs before anything else is set up.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, realpathSync, renameSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
/** relay.c includes relay.h; mux.c is the multiplexed data path. */
const SOURCES = ['relay.c', 'mux.c'].map((name) => join(HERE, name));
const INPUTS = [...SOURCES, join(HERE, 'relay.h')];
export const NATIVE_RELAY_ADDON = join(HERE, 'build', 'relay.node');

/** Node-API headers: the node-api-headers package, else those installed with Node itself. */
function headerDirs() {
  const repo = resolve(HERE, '..', '..', '..');
  const candidates = [
    join(repo, 'node_modules', 'node-api-headers', 'include'),
    resolve(dirname(process.execPath), '..', 'include', 'node'),
    '/usr/include/node',
  ];
  return candidates.filter((dir) => existsSync(join(dir, 'node_api.h')));
}

/**
 * OpenSSL's headers, of the OpenSSL inside the Node that runs swarmd (node@24 ships them; relay.c's data path uses
 * the OpenSSL the node binary exports, so no libssl is linked).
 */
function opensslDirs() {
  const repo = resolve(HERE, '..', '..', '..');
  const candidates = [
    join(
      repo,
      '.node',
      'node_modules',
      'node',
      'node_modules',
      `node-${process.platform}-${process.arch}`,
      'include',
      'node',
    ),
    resolve(dirname(realpathSync(process.execPath)), '..', 'include', 'node'),
    '/usr/include/node',
  ];
  return candidates.filter((dir) => existsSync(join(dir, 'openssl', 'ssl.h')));
}

function upToDate() {
  if (!existsSync(NATIVE_RELAY_ADDON)) return false;
  const built = statSync(NATIVE_RELAY_ADDON).mtimeMs;
  return INPUTS.every((input) => built >= statSync(input).mtimeMs);
}

/**
 * Builds the addon when it is missing or older than relay.c. Returns undefined when it is there (built or already
 * current), else why it could not be built.
 */
export function buildNativeRelay({ sanitize = false } = {}) {
  if (process.platform !== 'linux') return `the native relay is for Linux (this is ${process.platform})`;
  if (!sanitize && upToDate()) return undefined;
  const headers = headerDirs();
  if (headers.length === 0) return 'no Node-API headers (npm install puts them in node_modules/node-api-headers)';
  const openssl = opensslDirs();
  if (openssl.length === 0) return "no OpenSSL headers of Node's (node@24's package has them: npm run setup)";
  const compiler = process.env.CC || 'cc';
  mkdirSync(dirname(NATIVE_RELAY_ADDON), { recursive: true });
  // Written aside and renamed: a process loading the addon never sees half a file.
  const partial = `${NATIVE_RELAY_ADDON}.${process.pid}.tmp`;
  const result = spawnSync(
    compiler,
    ['-std=gnu11', '-Wall', '-Wextra', '-Werror', '-fPIC', '-shared', '-pthread']
      .concat(sanitize ? ['-O1', '-g', '-fsanitize=address,undefined', '-fno-omit-frame-pointer'] : ['-O2'])
      .concat(`-I${headers[0]}`, `-I${openssl[0]}`, '-o', partial, ...SOURCES),
    { encoding: 'utf8' },
  );
  if (result.error) return `${compiler} not found (install a C compiler, e.g. apt-get install gcc)`;
  if (result.status !== 0) return `${compiler} failed:\n${result.stderr.trim()}`;
  renameSync(partial, NATIVE_RELAY_ADDON);
  return undefined;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const failure = buildNativeRelay({ sanitize: process.argv.includes('--sanitize') });
  if (failure === undefined) {
    process.stdout.write(`native relay: ${NATIVE_RELAY_ADDON}\n`);
  } else {
    process.stderr.write(`native relay not built: ${failure}\n`);
    process.exitCode = 1;
  }
}
