// `swarm completion bash|zsh`: the scripts are generated from the command tree, so every command, alias and
// flag of the tree must appear in them; both shells must accept them (bash -n, zsh -n), and completing a few
// command lines in a real bash (and zsh, where installed) must offer what the tree says. Also: the help of
// every command is complete (a summary for each command, a description for each flag), since completion and
// help are both read off the same tree.
// biome-ignore-all lint/suspicious/noTemplateCurlyInString: shell script text, whose ${...} are the shell's
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Command, type CommandGroup, isGroup } from '../../cli/command.ts';
import { flattenTree } from '../../cli/commands/completion.ts';
import { GLOBAL_FLAGS } from '../../cli/dispatch.ts';
import { swarmCommands } from '../../cli/swarm.ts';
import { runSwarm } from '../helpers/swarm-cli.ts';

const work = mkdtempSync(join(tmpdir(), 'swarm-completion-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Every command of the tree with its path below the root (`node ls`), groups included. */
function entries(group: CommandGroup, prefix: string[] = []): { path: string[]; entry: Command | CommandGroup }[] {
  return group.commands.flatMap((entry) => {
    const path = [...prefix, entry.name];
    return [{ path, entry }, ...(isGroup(entry) ? entries(entry, path) : [])];
  });
}

const all = entries(swarmCommands);

function hasShell(shell: string): boolean {
  return spawnSync(shell, ['-c', 'exit 0']).status === 0;
}

async function script(shell: 'bash' | 'zsh'): Promise<string> {
  const run = await runSwarm('/nonexistent.sock', ['completion', shell]);
  expect(run.stderr).toBe('');
  expect(run.code).toBe(0);
  return run.stdout;
}

/** Runs `body` in a shell that has sourced the script; returns stdout (and fails on a non-zero exit). */
function inShell(shell: 'bash' | 'zsh', scriptText: string, body: string): string {
  const file = join(work, `completion.${shell}`);
  writeFileSync(file, scriptText);
  const args = shell === 'zsh' ? ['-f', '-c'] : ['--norc', '--noprofile', '-c'];
  const run = spawnSync(shell, [...args, body], { encoding: 'utf8', env: { ...process.env, SCRIPT: file } });
  expect(run.stderr).toBe('');
  expect(run.status).toBe(0);
  return run.stdout;
}

describe('swarm completion', () => {
  it('is a command of the tree, with its shells as argument choices', () => {
    const completion = swarmCommands.commands.find((entry) => entry.name === 'completion');
    expect(completion).toBeDefined();
    expect(flattenTree(swarmCommands).find((info) => info.path === 'completion')?.argChoices).toEqual(['bash', 'zsh']);
  });

  it('rejects another shell as a usage error', async () => {
    const run = await runSwarm('/nonexistent.sock', ['completion', 'fish']);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/unsupported shell "fish": must be one of: bash, zsh/);
  });

  for (const shell of ['bash', 'zsh'] as const) {
    it(`${shell}: names every command, alias and flag of the tree`, async () => {
      const text = await script(shell);
      expect(all.length).toBeGreaterThan(10);
      for (const { path, entry } of all) {
        const parent = path.slice(0, -1).join(' ');
        const word = path.at(-1)!;
        expect(text, path.join(' ')).toContain(`'${parent}|${word}'`);
        for (const alias of isGroup(entry) ? [] : (entry.aliases ?? [])) {
          expect(text, `${path.join(' ')} alias ${alias}`).toContain(`'${parent}|${alias}'`);
        }
      }
      // The flags offered at each path: its line in _swarm_flag_words (bash) or _swarm_describe_flags (zsh).
      const section = text.slice(
        text.indexOf(shell === 'bash' ? '_swarm_flag_words() {' : '_swarm_describe_flags() {'),
      );
      const flagLine = (path: string[]) => {
        const line = section.split('\n').find((candidate) => candidate.startsWith(`    '${path.join(' ')}') `));
        expect(line, `flags of "${path.join(' ')}"`).toBeDefined();
        return line!;
      };
      const offers = (line: string, word: string) => new RegExp(`['( ]${word}[ ':]`).test(line);
      for (const { path, entry } of all) {
        const flags = { ...GLOBAL_FLAGS, ...(isGroup(entry) ? {} : entry.flags) };
        const line = flagLine(path);
        for (const [name, spec] of Object.entries(flags)) {
          expect(offers(line, `--${name}`), `${path.join(' ')} --${name}`).toBe(true);
          if (spec.short) expect(offers(line, `-${spec.short}`), `${path.join(' ')} -${spec.short}`).toBe(true);
        }
      }
      for (const name of Object.keys(GLOBAL_FLAGS)) expect(offers(flagLine([]), `--${name}`)).toBe(true);
    });
  }

  it('bash: bash -n accepts the script', async () => {
    const file = join(work, 'syntax.bash');
    writeFileSync(file, await script('bash'));
    const check = spawnSync('bash', ['-n', file], { encoding: 'utf8' });
    expect(check.stderr).toBe('');
    expect(check.status).toBe(0);
  });

  it('zsh: zsh -n accepts the script (skipped where zsh is not installed)', async (context) => {
    if (!hasShell('zsh')) {
      console.warn('[completion] zsh is not installed: the zsh -n check is skipped (apt-get install zsh to run it)');
      context.skip();
    }
    const file = join(work, 'syntax.zsh');
    writeFileSync(file, await script('zsh'));
    const check = spawnSync('zsh', ['-n', file], { encoding: 'utf8' });
    expect(check.stderr).toBe('');
    expect(check.status).toBe(0);
  });

  it('bash: completes subcommands, flags, value choices and argument choices from the tree', async () => {
    const text = await script('bash');
    const complete = (line: string[]) => {
      const words = line.map((word) => `'${word}'`).join(' ');
      return inShell(
        'bash',
        text,
        `source "$SCRIPT"; COMP_WORDS=(${words}); COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)); _swarm; ` +
          `printf '%s\\n' "\${COMPREPLY[@]}"`,
      )
        .split('\n')
        .filter(Boolean);
    };
    expect(complete(['swarm', ''])).toEqual(swarmCommands.commands.map((entry) => entry.name));
    expect(complete(['swarm', 'no'])).toEqual(['node']);
    expect(complete(['swarm', '--host', '/tmp/x.sock', 'node', 'list', '-q', '--'])).toEqual([
      '--host',
      '--format',
      '--help',
      '--quiet',
    ]);
    expect(complete(['swarm', '--format', ''])).toEqual(['table', 'json']);
    expect(complete(['swarm', 'node', 'update', '--availability', ''])).toEqual(['active', 'pause', 'drain']);
    expect(complete(['swarm', 'node', 'update', '--role=w'])).toEqual(['--role=worker']);
    // seconds|default names a kind of value, not a fixed set.
    expect(complete(['swarm', 'node', 'update', '--heartbeat-period', ''])).toEqual([]);
    expect(complete(['swarm', 'join-token', '-q', ''])).toEqual(['worker', 'manager']);
    expect(complete(['swarm', 'completion', ''])).toEqual(['bash', 'zsh']);
    // After the image, the words are the task's own command line: no flags of ours.
    expect(complete(['swarm', 'service', 'create', '--replicas', '2', 'img', '-'])).toEqual([]);
    expect(complete(['swarm', 'service', 'create', '--replicas', '2', '--no-health'])).toEqual(['--no-healthcheck']);
  });

  it('zsh: completes subcommands with their summaries, and flags (skipped where zsh is not installed)', async (context) => {
    if (!hasShell('zsh')) {
      console.warn('[completion] zsh is not installed: the zsh completion check is skipped');
      context.skip();
    }
    const text = await script('zsh');
    // compinit is not loaded in `zsh -f`: stand-ins for compdef, _describe and compadd print what they get.
    const stubs =
      'compdef() { :; }; source "$SCRIPT"; ' +
      '_describe() { local arr=${@[-1]}; print -rl -- ${(P)arr}; }; compadd() { shift; print -rl -- "$@"; }; ';
    const complete = (line: string[]) =>
      inShell('zsh', text, `${stubs} words=(${line.map((word) => `'${word}'`).join(' ')}); CURRENT=$#words; _swarm`)
        .split('\n')
        .filter(Boolean);
    const top = complete(['swarm', '']);
    for (const entry of swarmCommands.commands) expect(top).toContain(`${entry.name}:${entry.summary}`);
    expect(complete(['swarm', 'node', 'ls', '-'])).toContain('--quiet:Only display IDs');
    expect(complete(['swarm', 'join-token', ''])).toEqual(['worker', 'manager']);
    expect(complete(['swarm', '--format', ''])).toEqual(['table', 'json']);
  });
});

describe('swarm help', () => {
  it('every group and command has a summary, and every flag a description', () => {
    expect(swarmCommands.summary.trim()).not.toBe('');
    for (const { path, entry } of all) {
      expect(entry.summary.trim(), `${path.join(' ')}: summary`).not.toBe('');
      if (isGroup(entry)) continue;
      for (const [name, spec] of Object.entries(entry.flags ?? {})) {
        expect(spec.description.trim(), `${path.join(' ')} --${name}: description`).not.toBe('');
      }
    }
    for (const [name, spec] of Object.entries(GLOBAL_FLAGS)) expect(spec.description.trim(), name).not.toBe('');
  });

  it('--help of every group and command lists its commands and flags with their descriptions', async () => {
    const root = await runSwarm('/nonexistent.sock', ['--help']);
    expect(root.code).toBe(0);
    for (const entry of swarmCommands.commands) expect(root.stdout).toContain(entry.summary);
    for (const { path, entry } of all) {
      const help = await runSwarm('/nonexistent.sock', [...path, '--help']);
      expect(help.code, path.join(' ')).toBe(0);
      expect(help.stdout, path.join(' ')).toMatch(new RegExp(`^Usage: +swarm ${path.join(' ')}`));
      expect(help.stdout).toContain(entry.summary);
      if (isGroup(entry)) {
        for (const child of entry.commands)
          expect(help.stdout, `${path.join(' ')} ${child.name}`).toContain(child.summary);
        continue;
      }
      for (const [name, spec] of Object.entries({ ...GLOBAL_FLAGS, ...entry.flags })) {
        expect(help.stdout, `${path.join(' ')} --${name}`).toContain(`--${name}`);
        expect(help.stdout, `${path.join(' ')} --${name}`).toContain(spec.description);
      }
    }
  });
});
