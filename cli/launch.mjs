#!/usr/bin/env node
// Runs a script of this repo under Node >= 22, on any machine that has Node and npm.
//
// Why this exists: libp2p v3 needs Node 22+ (Promise.withResolvers and friends), while many machines
// (HPC login nodes, Debian stable, our CI) ship Node 20. Where the running Node is already >= 22 we use
// it as is. Otherwise we install Node 24 LTS from the npm registry (the `node` package ships the real
// binary) into .node/ once, and re-run under it. The same goes for dependencies: when node_modules is
// missing or older than package-lock.json, `npm install` runs first, so a fresh clone needs no other step.
// Last, the load balancer's native relay is compiled when missing or older than its source (one C file, about
// a second); without a C compiler that is said once per run and the load balancer relays in JS instead.
//
// This file must stay plain JavaScript with no imports outside Node's standard library and this repo's own
// plain-JavaScript build step: it is what runs before anything else is installed.
//
// Usage: node cli/launch.mjs SCRIPT [ARGS...]   (SCRIPT is a path relative to the repo root)
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildNativeRelay } from '../daemon/lb/native/build.mjs';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const MIN_NODE_MAJOR = 22;
const NODE_PACKAGE = 'node@24';
const LOCAL_NODE_DIR = join(REPO_ROOT, '.node');
const LOCAL_NODE_BIN = join(LOCAL_NODE_DIR, 'node_modules', 'node', 'bin', 'node');

function say(line) {
  process.stderr.write(`launch: ${line}\n`);
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: 'inherit', ...options });
  if (result.error) throw result.error;
  return result.status ?? 1;
}

function nodeMajor(version) {
  return Number.parseInt(version.replace(/^v/, '').split('.')[0], 10);
}

/** Path of a Node binary that is >= MIN_NODE_MAJOR, installing Node 24 through npm when needed. */
export function ensureModernNode() {
  if (nodeMajor(process.versions.node) >= MIN_NODE_MAJOR) return process.execPath;
  if (!existsSync(LOCAL_NODE_BIN)) {
    say(
      `Node ${process.versions.node} is too old (need >= ${MIN_NODE_MAJOR}); installing ${NODE_PACKAGE} from npm into .node/`,
    );
    const status = run('npm', ['install', '--no-save', '--no-package-lock', '--prefix', LOCAL_NODE_DIR, NODE_PACKAGE], {
      cwd: REPO_ROOT,
    });
    if (status !== 0 || !existsSync(LOCAL_NODE_BIN)) {
      throw new Error(
        `could not install ${NODE_PACKAGE} through npm (exit ${status}); install Node >= ${MIN_NODE_MAJOR} by hand`,
      );
    }
  }
  return LOCAL_NODE_BIN;
}

/** Environment whose PATH finds the chosen Node first, so `node` and npm scripts in children use it too. */
export function envFor(nodeBin) {
  return { ...process.env, PATH: `${dirname(nodeBin)}${delimiter}${process.env.PATH ?? ''}` };
}

function dependenciesAreCurrent() {
  const installedMarker = join(REPO_ROOT, 'node_modules', '.package-lock.json');
  const lockfile = join(REPO_ROOT, 'package-lock.json');
  if (!existsSync(installedMarker)) return false;
  if (!existsSync(lockfile)) return true;
  return statSync(installedMarker).mtimeMs >= statSync(lockfile).mtimeMs;
}

export function ensureDependencies(nodeBin) {
  if (process.env.SWARMD_SKIP_INSTALL === '1' || dependenciesAreCurrent()) return;
  // `npm install` rather than `npm ci`: it installs the versions pinned in package-lock.json just the same,
  // but tolerates a lockfile that lacks other platforms' optional packages (biome's and msgpackr-extract's
  // builds for other OSes), which some registry mirrors do not serve and `npm ci` would reject.
  say('dependencies missing or out of date; running npm install');
  const status = run('npm', ['install', '--no-audit', '--no-fund'], { cwd: REPO_ROOT, env: envFor(nodeBin) });
  if (status !== 0) throw new Error(`npm install failed (exit ${status})`);
}

/** Builds the native relay if needed; a failure only costs the load balancer speed, so it is said, not fatal. */
export function ensureNativeRelay() {
  const failure = buildNativeRelay();
  if (failure !== undefined) say(`native relay not built, the load balancer relays in JS: ${failure}`);
}

/**
 * Runs a command of this repo (the `swarmd` and `swarm` bin shims): the esbuild bundle from `npm run build`
 * when there is one (it needs far less memory, with a small young generation for an idle daemon), else the
 * TypeScript entry point. Exits with the command's status.
 */
export function runCommand(name, args) {
  const nodeBin = ensureModernNode();
  ensureDependencies(nodeBin);
  ensureNativeRelay();
  const bundle = join(REPO_ROOT, 'dist', `${name}.mjs`);
  const entry = existsSync(bundle) ? ['--max-semi-space-size=1', bundle] : [join(REPO_ROOT, 'cli', `${name}.ts`)];
  const result = spawnSync(nodeBin, [...entry, ...args], { stdio: 'inherit', env: envFor(nodeBin) });
  if (result.error) throw result.error;
  if (result.signal) process.kill(process.pid, result.signal);
  process.exit(result.status ?? 1);
}

function main(argv) {
  const [script, ...args] = argv;
  if (!script) {
    say('usage: node cli/launch.mjs SCRIPT [ARGS...]');
    return 2;
  }
  const nodeBin = ensureModernNode();
  ensureDependencies(nodeBin);
  ensureNativeRelay();
  const result = spawnSync(nodeBin, [resolve(REPO_ROOT, script), ...args], { stdio: 'inherit', env: envFor(nodeBin) });
  if (result.error) throw result.error;
  if (result.signal) process.kill(process.pid, result.signal);
  return result.status ?? 1;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (error) {
    say(error instanceof Error ? error.message : String(error));
    process.exitCode = 1;
  }
}
