// Turns argv into a call of one Command: walks the command tree, parses flags strictly with node:util's
// parseArgs, checks argument counts, answers --help at every level, and builds the Context a command runs in.
import { type ParseArgsOptionsConfig, parseArgs } from 'node:util';
import { ApiClient } from '../daemon/api/client.ts';
import { controlSocketPath, defaultDataDir } from '../daemon/api/socket-path.ts';
import {
  type Command,
  type CommandGroup,
  type FlagSpec,
  type FlagValues,
  type Format,
  type Io,
  isGroup,
  UsageError,
} from './command.ts';

/** Accepted before any command and after it (`swarm --format json node ls`, `swarm node ls --format json`). */
export const GLOBAL_FLAGS: Record<string, FlagSpec> = {
  host: {
    type: 'string',
    valueName: 'PATH',
    description: 'Control socket of the daemon (default: $SWARM_HOST, else <data dir>/swarmd.sock)',
  },
  format: { type: 'string', valueName: 'table|json', description: 'Output format (default: table)' },
  help: { type: 'boolean', short: 'h', description: 'Show this help' },
};

const FORMATS: readonly Format[] = ['table', 'json'];

interface GlobalValues {
  host?: string;
  format?: string;
}

/** Runs the command argv names, below `root`. Resolves to the exit status; throws UsageError for exit 2. */
export async function dispatch(root: CommandGroup, argv: readonly string[], io: Io): Promise<number> {
  let group = root;
  let path = root.name;
  let rest = [...argv];
  const globals: GlobalValues = {};
  for (;;) {
    const [leading, remaining] = splitLeadingFlags(rest);
    const values = parseFlags(leading, GLOBAL_FLAGS, false, path).values;
    Object.assign(globals, pickGlobals(values));
    const [name, ...after] = remaining;
    if (values.help === true || name === undefined) {
      io.stdout.write(groupHelp(group, path));
      return 0;
    }
    const entry = group.commands.find((candidate) => candidate.name === name || aliasesOf(candidate).includes(name));
    if (!entry) throw new UsageError(`unknown command "${name}" for "${path}" (see '${path} --help')`);
    path = `${path} ${entry.name}`;
    rest = after;
    if (isGroup(entry)) {
      group = entry;
      continue;
    }
    return runCommand(entry, path, rest, globals, io);
  }
}

async function runCommand(command: Command, path: string, argv: string[], globals: GlobalValues, io: Io) {
  const specs = { ...GLOBAL_FLAGS, ...command.flags };
  const { values, positionals } = command.flagsBeforeArgs
    ? parseFlagsBeforeArgs(argv, specs, path)
    : parseFlags(argv, specs, true, path);
  if (values.help === true) {
    io.stdout.write(commandHelp(command, path));
    return 0;
  }
  checkArgCount(command, path, positionals.length);
  const merged = { ...globals, ...pickGlobals(values) };
  const format = merged.format ?? 'table';
  if (!FORMATS.includes(format as Format)) {
    throw new UsageError(`invalid --format "${format}": must be one of: ${FORMATS.join(', ')}`);
  }
  const client = new ApiClient(resolveSocketPath(merged.host, io.env));
  return command.run({ io, format: format as Format, client }, values, positionals);
}

/** --host, else $SWARM_HOST, else the default data dir's socket. `unix://` is accepted, as docker's -H has it. */
export function resolveSocketPath(host: string | undefined, env: Record<string, string | undefined>): string {
  const chosen = host || env.SWARM_HOST || controlSocketPath(defaultDataDir(env));
  return chosen.startsWith('unix://') ? chosen.slice('unix://'.length) : chosen;
}

function pickGlobals(values: FlagValues): GlobalValues {
  const picked: GlobalValues = {};
  if (typeof values.host === 'string') picked.host = values.host;
  if (typeof values.format === 'string') picked.format = values.format;
  return picked;
}

function aliasesOf(entry: Command | CommandGroup): string[] {
  return isGroup(entry) ? [] : (entry.aliases ?? []);
}

/** Splits off the flags before the first word, so a group parses only its own flags, not its subcommand's. */
function splitLeadingFlags(argv: readonly string[]): [string[], string[]] {
  let index = 0;
  while (index < argv.length) {
    const arg = argv[index]!;
    if (!arg.startsWith('-') || arg === '-' || arg === '--') break;
    index += 1;
    const spec = arg.startsWith('--') ? GLOBAL_FLAGS[arg.slice(2)] : undefined;
    if (spec?.type === 'string' && !arg.includes('=')) index += 1; // its value is the next word
  }
  return [argv.slice(0, index), argv.slice(index)];
}

function parseFlags(args: readonly string[], specs: Record<string, FlagSpec>, allowPositionals: boolean, path: string) {
  const options: ParseArgsOptionsConfig = {};
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = { type: spec.type, multiple: spec.multiple ?? false, ...(spec.short ? { short: spec.short } : {}) };
  }
  try {
    const parsed = parseArgs({ args: [...args], options, strict: true, allowPositionals });
    return { values: parsed.values as FlagValues, positionals: parsed.positionals };
  } catch (error) {
    throw translateParseError(error, path);
  }
}

/**
 * Flags up to the first argument (or `--`), then everything after it as arguments, untouched. A lenient pass
 * finds where the flags end (it knows which flags take a value); the strict pass then checks those flags.
 */
function parseFlagsBeforeArgs(args: readonly string[], specs: Record<string, FlagSpec>, path: string) {
  const options: ParseArgsOptionsConfig = {};
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = { type: spec.type, multiple: true, ...(spec.short ? { short: spec.short } : {}) };
  }
  const { tokens } = parseArgs({ args: [...args], options, strict: false, allowPositionals: true, tokens: true });
  const end = tokens.find((token) => token.kind === 'positional' || token.kind === 'option-terminator');
  if (!end) return parseFlags(args, specs, false, path);
  const { values } = parseFlags(args.slice(0, end.index), specs, false, path);
  const rest = args.slice(end.kind === 'option-terminator' ? end.index + 1 : end.index);
  return { values, positionals: rest };
}

/** parseArgs' messages are written for programmers; say the same thing in one line for the user. */
function translateParseError(error: unknown, path: string): Error {
  const code = (error as { code?: string }).code;
  const message = error instanceof Error ? error.message : String(error);
  const quoted = /'([^']+)'/.exec(message)?.[1]?.split(' ')[0] ?? '';
  const hint = `(see '${path} --help')`;
  switch (code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return new UsageError(`unknown flag ${quoted} for "${path}" ${hint}`);
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE': {
      const flag = /--[\w-]+/.exec(message)?.[0] ?? quoted;
      if (message.includes('argument missing')) return new UsageError(`flag ${flag} needs a value ${hint}`);
      if (message.includes('does not take an argument')) return new UsageError(`flag ${flag} takes no value ${hint}`);
      if (message.includes('ambiguous')) {
        return new UsageError(`flag ${flag} needs a value; write ${flag}=VALUE for one that starts with "-" ${hint}`);
      }
      return new UsageError(`${message.replace(/\s*\n\s*/g, ' ')} ${hint}`);
    }
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return new UsageError(`unexpected argument "${quoted}" ${hint}`);
    default:
      return error instanceof Error ? error : new Error(message);
  }
}

function checkArgCount(command: Command, path: string, count: number): void {
  const { min, max } = command.args;
  const hint = `(see '${path} --help')`;
  if (max === 0 && count > 0) throw new UsageError(`"${path}" takes no arguments ${hint}`);
  if (count < min) {
    const amount = max === min ? `exactly ${min}` : `at least ${min}`;
    throw new UsageError(`"${path}" requires ${amount} argument${min === 1 ? '' : 's'} ${hint}`);
  }
  if (max !== undefined && count > max) {
    throw new UsageError(`"${path}" accepts at most ${max} argument${max === 1 ? '' : 's'} ${hint}`);
  }
}

function groupHelp(group: CommandGroup, path: string): string {
  const width = Math.max(...group.commands.map((entry) => entry.name.length)) + 3;
  const commands = [...group.commands]
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((entry) => `  ${entry.name.padEnd(width)}${entry.summary}`);
  return [
    `Usage:  ${path} [OPTIONS] COMMAND`,
    '',
    group.summary,
    '',
    'Commands:',
    ...commands,
    '',
    'Global options:',
    ...flagHelp(GLOBAL_FLAGS),
    '',
    `Run '${path} COMMAND --help' for more information on a command.`,
    '',
  ].join('\n');
}

function commandHelp(command: Command, path: string): string {
  const lines = [`Usage:  ${path} ${command.usage}`.trimEnd(), '', command.summary];
  if (command.aliases?.length) lines.push('', `Aliases:  ${command.aliases.join(', ')}`);
  if (command.flags && Object.keys(command.flags).length > 0) lines.push('', 'Options:', ...flagHelp(command.flags));
  lines.push('', 'Global options:', ...flagHelp(GLOBAL_FLAGS), '');
  return lines.join('\n');
}

function flagHelp(specs: Record<string, FlagSpec>): string[] {
  const rows = Object.entries(specs).map(([name, spec]) => {
    const short = spec.short ? `-${spec.short}, ` : '    ';
    const value = spec.type === 'string' ? ` ${spec.valueName ?? 'string'}` : '';
    const repeat = spec.multiple ? ' (repeatable)' : '';
    return [`  ${short}--${name}${value}`, `${spec.description}${repeat}`] as const;
  });
  const width = Math.max(...rows.map(([left]) => left.length)) + 3;
  return rows.map(([left, right]) => `${left.padEnd(width)}${right}`);
}
