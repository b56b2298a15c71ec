// The shape of a `swarm` command. Commands are declared as data (name, flags, arguments, run) so that the
// dispatcher can parse and check them, and print their help, the same way for every one; a new area of
// commands (services, ...) is one more module exporting a CommandGroup.
import { type ApiClient, ApiClientError } from '../daemon/api/client.ts';

export interface Output {
  write(text: string): unknown;
}

export interface Io {
  stdout: Output;
  stderr: Output;
  env: Record<string, string | undefined>;
}

export type Format = 'table' | 'json';

export interface Context {
  io: Io;
  format: Format;
  client: ApiClient;
}

export interface FlagSpec {
  type: 'string' | 'boolean';
  short?: string;
  multiple?: boolean;
  /** Shown in help for string flags, e.g. `key=value`. */
  valueName?: string;
  description: string;
}

export type FlagValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface Command {
  name: string;
  aliases?: string[];
  summary: string;
  /** What follows the command path in the usage line, e.g. `[OPTIONS] NODE [NODE...]`. */
  usage: string;
  flags?: Record<string, FlagSpec>;
  args: { min: number; max?: number };
  /**
   * Flags end at the first argument, as docker's `service create IMAGE [COMMAND] [ARG...]` has it: what follows
   * is the task's own command line, whose `-x` words are not ours.
   */
  flagsBeforeArgs?: boolean;
  run(context: Context, flags: FlagValues, args: string[]): Promise<number>;
}

export interface CommandGroup {
  name: string;
  summary: string;
  commands: (Command | CommandGroup)[];
}

export function isGroup(entry: Command | CommandGroup): entry is CommandGroup {
  return 'commands' in entry;
}

/** A mistake in how the command was typed: exit status 2, and nothing was sent to the daemon. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export function stringFlag(flags: FlagValues, name: string): string | undefined {
  const value = flags[name];
  return typeof value === 'string' ? value : undefined;
}

export function listFlag(flags: FlagValues, name: string): string[] {
  const value = flags[name];
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === 'string') : [];
}

export function booleanFlag(flags: FlagValues, name: string): boolean {
  return flags[name] === true;
}

/**
 * Runs `action` for each object named, like docker: one failure is reported and the rest still run. Resolves
 * to whether any failed. An unreachable daemon stops at once, rather than saying so once per object.
 */
export async function forEachRef(context: Context, refs: string[], action: (ref: string) => Promise<void>) {
  let failed = false;
  for (const ref of refs) {
    try {
      await action(ref);
    } catch (error) {
      if (!(error instanceof ApiClientError) || error.status === undefined) throw error;
      context.io.stderr.write(`swarm: ${error.message}\n`);
      failed = true;
    }
  }
  return failed;
}
