// `swarm completion bash|zsh`: a shell completion script generated from the command tree itself (groups,
// commands, aliases, flags with their descriptions, and the value choices that help shows as `a|b`), so it
// can never drift from the CLI: a new command or flag is completed as soon as it is declared.
//
// Both scripts work the same way: walk the words typed before the cursor to find the command path (a flag
// that takes a value skips its value), then offer that path's subcommands, its flags (after `-`), a flag's
// value choices, or the choices of the first argument (`(worker|manager)` in the usage line).

// biome-ignore-all lint/suspicious/noTemplateCurlyInString: shell script text, whose ${...} are the shell's
import { type Command, type CommandGroup, type FlagSpec, isGroup, UsageError } from '../command.ts';
import { GLOBAL_FLAGS } from '../dispatch.ts';

export const SHELLS = ['bash', 'zsh'] as const;
export type Shell = (typeof SHELLS)[number];

/** One command path of the tree, flattened: what the scripts need to know about it. */
interface PathInfo {
  /** The canonical path below the root, words joined by one space; '' for the root. */
  path: string;
  summary: string;
  group: boolean;
  /** Subcommands of a group: canonical name, its aliases, summary. */
  children: { name: string; aliases: string[]; summary: string }[];
  /** Flags accepted here: the global ones everywhere, plus a command's own. */
  flags: { name: string; spec: FlagSpec }[];
  /** Choices of the first argument, from a `(a|b)` in the usage line. */
  argChoices: string[];
  /** Flags end at the first argument (service create IMAGE [COMMAND] [ARG...]). */
  flagsBeforeArgs: boolean;
}

/** The command tree as a flat list of paths, root first, in declaration order. */
export function flattenTree(root: CommandGroup): PathInfo[] {
  const out: PathInfo[] = [];
  const globals = globalFlags();
  const visit = (entry: Command | CommandGroup, path: string) => {
    if (isGroup(entry)) {
      out.push({
        path,
        summary: entry.summary,
        group: true,
        children: entry.commands.map((child) => ({
          name: child.name,
          aliases: isGroup(child) ? [] : (child.aliases ?? []),
          summary: child.summary,
        })),
        flags: globals,
        argChoices: [],
        flagsBeforeArgs: false,
      });
      for (const child of entry.commands) visit(child, path ? `${path} ${child.name}` : child.name);
      return;
    }
    out.push({
      path,
      summary: entry.summary,
      group: false,
      children: [],
      flags: Object.entries({ ...GLOBAL_FLAGS, ...entry.flags }).map(([name, spec]) => ({ name, spec })),
      argChoices: usageChoices(entry.usage),
      flagsBeforeArgs: entry.flagsBeforeArgs ?? false,
    });
  };
  visit(root, '');
  return out;
}

/** Words that stand for a kind of value rather than being one: `seconds|default` is not a fixed set. */
const PLACEHOLDERS = new Set([
  'seconds',
  'duration',
  'uint',
  'int',
  'number',
  'n',
  'bytes',
  'decimal',
  'string',
  'path',
]);

/** `a|b|c` as a value name (e.g. `table|json`) means exactly those values, unless one is a placeholder. */
export function valueChoices(spec: FlagSpec): string[] {
  const name = spec.valueName ?? '';
  if (!/^[\w.-]+(\|[\w.-]+)+$/.test(name)) return [];
  const choices = name.split('|');
  return choices.some((choice) => PLACEHOLDERS.has(choice.toLowerCase())) ? [] : choices;
}

/** The first `(a|b)` of a usage line: the choices of the first argument. */
function usageChoices(usage: string): string[] {
  const match = /\(([\w.-]+(?:\|[\w.-]+)+)\)/.exec(usage);
  return match ? match[1]!.split('|') : [];
}

/** The words that name a flag: `--name`, and `-x` where it has a short form. */
function flagWords({ name, spec }: { name: string; spec: FlagSpec }): string[] {
  return spec.short ? [`--${name}`, `-${spec.short}`] : [`--${name}`];
}

/** A value for a single-quoted shell word (bash and zsh alike). */
function quote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

export function completionScript(root: CommandGroup, shell: Shell): string {
  const paths = flattenTree(root);
  return shell === 'bash' ? bashScript(root.name, paths) : zshScript(root.name, paths);
}

/** Shell function names may not contain `-`; the program name might. */
function functionPrefix(program: string): string {
  return `_${program.replace(/[^A-Za-z0-9_]/g, '_')}`;
}

function globalFlags(): { name: string; spec: FlagSpec }[] {
  return Object.entries(GLOBAL_FLAGS).map(([name, spec]) => ({ name, spec }));
}

/** The flags of a path that are not global (a command's own flag of the same name wins, as in dispatch). */
function ownFlags(info: PathInfo): { name: string; spec: FlagSpec }[] {
  return info.flags.filter((flag) => GLOBAL_FLAGS[flag.name] !== flag.spec);
}

/** `case` arms shared by both scripts: which path a word leads to, which flags take a value, choices. */
function commonFunctions(fn: string, paths: PathInfo[]): string[] {
  const lines: string[] = [];
  lines.push(`# ${fn}_child PATH WORD: the path WORD leads to below the group PATH (aliases resolved), else fails.`);
  lines.push(`${fn}_child() {`, '  case "$1|$2" in');
  for (const info of paths.filter((p) => p.group)) {
    for (const child of info.children) {
      const target = info.path ? `${info.path} ${child.name}` : child.name;
      const keys = [child.name, ...child.aliases].map((word) => quote(`${info.path}|${word}`)).join(' | ');
      lines.push(`    ${keys}) REPLY=${quote(target)} ;;`);
    }
  }
  lines.push('    *) return 1 ;;', '  esac', '}', '');

  lines.push(`# ${fn}_is_group PATH: whether PATH is a group of commands (rather than a command).`);
  lines.push(`${fn}_is_group() {`, '  case "$1" in');
  lines.push(
    `    ${paths
      .filter((p) => p.group)
      .map((p) => quote(p.path))
      .join(' | ')}) return 0 ;;`,
  );
  lines.push('    *) return 1 ;;', '  esac', '}', '');

  lines.push(`# ${fn}_takes_value PATH FLAG: whether FLAG (long or short) takes a value at PATH.`);
  lines.push(`${fn}_takes_value() {`, '  case "$1|$2" in');
  for (const info of paths) {
    const words = ownFlags(info)
      .filter((flag) => flag.spec.type === 'string')
      .flatMap(flagWords);
    if (words.length > 0)
      lines.push(`    ${words.map((word) => quote(`${info.path}|${word}`)).join(' | ')}) return 0 ;;`);
  }
  const globalWords = globalFlags()
    .filter((flag) => flag.spec.type === 'string')
    .flatMap(flagWords);
  lines.push(`    ${globalWords.map((word) => `*${quote(`|${word}`)}`).join(' | ')}) return 0 ;;`);
  lines.push('    *) return 1 ;;', '  esac', '}', '');

  lines.push(
    `# ${fn}_value_choices PATH FLAG: the values FLAG accepts at PATH (REPLY, space-separated), if a fixed set.`,
  );
  lines.push(`${fn}_value_choices() {`, '  case "$1|$2" in');
  const choiceArm = (flag: { name: string; spec: FlagSpec }, key: (word: string) => string) => {
    const choices = valueChoices(flag.spec);
    if (choices.length > 0) {
      lines.push(`    ${flagWords(flag).map(key).join(' | ')}) REPLY=${quote(choices.join(' '))} ;;`);
    }
  };
  for (const info of paths) {
    for (const flag of ownFlags(info)) choiceArm(flag, (word) => quote(`${info.path}|${word}`));
  }
  for (const flag of globalFlags()) choiceArm(flag, (word) => `*${quote(`|${word}`)}`);
  lines.push('    *) return 1 ;;', '  esac', '}', '');

  lines.push(`# ${fn}_arg_choices PATH: the choices of the first argument of the command PATH, if a fixed set.`);
  lines.push(`${fn}_arg_choices() {`, '  case "$1" in');
  for (const info of paths.filter((p) => p.argChoices.length > 0)) {
    lines.push(`    ${quote(info.path)}) REPLY=${quote(info.argChoices.join(' '))} ;;`);
  }
  lines.push('    *) return 1 ;;', '  esac', '}', '');

  lines.push(`# ${fn}_flags_end PATH: whether the command's flags end at its first argument.`);
  lines.push(`${fn}_flags_end() {`, '  case "$1" in');
  const ending = paths.filter((p) => p.flagsBeforeArgs).map((p) => quote(p.path));
  if (ending.length > 0) lines.push(`    ${ending.join(' | ')}) return 0 ;;`);
  lines.push('    *) return 1 ;;', '  esac', '}', '');
  return lines;
}

/**
 * The walk over the words before the cursor, the same in bash and zsh (both run it; arrays are indexed from
 * `first` to `last`): sets cpath (the command path; not `path`, which zsh ties to $PATH), args (arguments seen at that path) and after_flags
 * (flags ended: `--`, or the first argument of a command whose flags end there).
 */
function walk(fn: string, words: string, first: string, last: string): string[] {
  return [
    `  local cpath='' word='' skip=0 args=0 after_flags=0 i`,
    `  for ((i = ${first}; i < ${last}; i++)); do`,
    `    word="\${${words}[i]}"`,
    '    if ((skip)); then skip=0; continue; fi',
    '    if ((!after_flags)); then',
    '      case "$word" in',
    '        --) after_flags=1; continue ;;',
    '        --*=*) continue ;;',
    `        -?*) ${fn}_takes_value "$cpath" "$word" && skip=1; continue ;;`,
    '      esac',
    '    fi',
    `    if ((args == 0)) && ${fn}_is_group "$cpath" && ${fn}_child "$cpath" "$word"; then`,
    '      cpath="$REPLY"',
    '    else',
    '      args=$((args + 1))',
    `      ${fn}_flags_end "$cpath" && after_flags=1`,
    '    fi',
    '  done',
  ];
}

function bashScript(program: string, paths: PathInfo[]): string {
  const fn = functionPrefix(program);
  const lines: string[] = [
    `# bash completion for ${program}. Generated by \`${program} completion bash\` from the command tree: regenerate`,
    '# it after an upgrade rather than editing it.',
    '#',
    '# Use it now:        source <(swarm completion bash)'.replace('swarm', program),
    `# Install it:        ${program} completion bash > ~/.local/share/bash-completion/completions/${program}`,
    `#                    (or /etc/bash_completion.d/${program} for every user)`,
    '',
    ...commonFunctions(fn, paths),
    `# ${fn}_subcommands PATH: the subcommands of the group PATH (REPLY, space-separated, aliases included).`,
    `${fn}_subcommands() {`,
    '  case "$1" in',
    ...paths
      .filter((p) => p.group)
      .map(
        (p) => `    ${quote(p.path)}) REPLY=${quote(p.children.flatMap((c) => [c.name, ...c.aliases]).join(' '))} ;;`,
      ),
    '    *) REPLY="" ;;',
    '  esac',
    '}',
    '',
    `# ${fn}_flag_words PATH: the flags PATH accepts (REPLY, space-separated).`,
    `${fn}_flag_words() {`,
    '  case "$1" in',
    ...paths.map((p) => `    ${quote(p.path)}) REPLY=${quote(p.flags.flatMap(flagWords).join(' '))} ;;`),
    '    *) REPLY="" ;;',
    '  esac',
    '}',
    '',
    `${fn}() {`,
    '  local cur="${COMP_WORDS[COMP_CWORD]}" prev=""',
    '  ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD - 1]}"',
    '  local REPLY',
    ...walk(fn, 'COMP_WORDS', '1', 'COMP_CWORD'),
    '  COMPREPLY=()',
    '  # The value of a flag: its choices, or nothing to complete (a free-form value).',
    '  if ((skip)); then',
    `    if ${fn}_value_choices "$cpath" "$prev"; then`,
    '      mapfile -t COMPREPLY < <(compgen -W "$REPLY" -- "$cur")',
    '    elif [[ "$prev" == --host ]]; then',
    '      mapfile -t COMPREPLY < <(compgen -f -- "$cur")',
    '    fi',
    '    return 0',
    '  fi',
    '  if [[ "$cur" == --*=* ]]; then',
    '    local flag="${cur%%=*}"',
    `    if ${fn}_value_choices "$cpath" "$flag"; then`,
    '      mapfile -t COMPREPLY < <(compgen -P "$flag=" -W "$REPLY" -- "${cur#*=}")',
    '    fi',
    '    return 0',
    '  fi',
    '  if ((!after_flags)) && [[ "$cur" == -* ]]; then',
    `    ${fn}_flag_words "$cpath"`,
    '    mapfile -t COMPREPLY < <(compgen -W "$REPLY" -- "$cur")',
    '    return 0',
    '  fi',
    `  if ((args == 0)) && ${fn}_is_group "$cpath"; then`,
    `    ${fn}_subcommands "$cpath"`,
    '    mapfile -t COMPREPLY < <(compgen -W "$REPLY" -- "$cur")',
    `  elif ((args == 0)) && ${fn}_arg_choices "$cpath"; then`,
    '    mapfile -t COMPREPLY < <(compgen -W "$REPLY" -- "$cur")',
    '  fi',
    '  return 0',
    '}',
    '',
    `complete -F ${fn} ${program}`,
    '',
  ];
  return lines.join('\n');
}

/** `name:description` for zsh's _describe, the name's colons escaped. */
function describeEntry(name: string, description: string): string {
  return quote(`${name.replace(/:/g, '\\:')}:${oneLine(description)}`);
}

function zshScript(program: string, paths: PathInfo[]): string {
  const fn = functionPrefix(program);
  const lines: string[] = [
    `#compdef ${program}`,
    `# zsh completion for ${program}. Generated by \`${program} completion zsh\` from the command tree: regenerate it`,
    '# after an upgrade rather than editing it.',
    '#',
    `# Use it now:        source <(${program} completion zsh)      (after compinit)`,
    `# Install it:        ${program} completion zsh > "\${fpath[1]}/_${program}"   (then start a new shell)`,
    '',
    ...commonFunctions(fn, paths),
    `# ${fn}_describe_subcommands PATH: sets the array reply to the subcommands of PATH as name:summary.`,
    `${fn}_describe_subcommands() {`,
    '  case "$1" in',
    ...paths
      .filter((p) => p.group)
      .map((p) => {
        const entries = p.children.flatMap((c) => [
          describeEntry(c.name, c.summary),
          ...c.aliases.map((alias) => describeEntry(alias, `${c.summary} (alias of ${c.name})`)),
        ]);
        return `    ${quote(p.path)}) reply=(${entries.join(' ')}) ;;`;
      }),
    '    *) reply=() ;;',
    '  esac',
    '}',
    '',
    `# ${fn}_describe_flags PATH: sets the array reply to the flags PATH accepts as flag:description.`,
    `${fn}_describe_flags() {`,
    '  case "$1" in',
    ...paths.map((p) => {
      const entries = p.flags.flatMap((flag) => {
        const value = flag.spec.type === 'string' ? ` (${flag.spec.valueName ?? 'string'})` : '';
        const description = `${flag.spec.description}${value}`;
        return flagWords(flag).map((word) => describeEntry(word, description));
      });
      return `    ${quote(p.path)}) reply=(${entries.join(' ')}) ;;`;
    }),
    '    *) reply=() ;;',
    '  esac',
    '}',
    '',
    `${fn}() {`,
    '  setopt localoptions noshwordsplit noksharrays',
    '  local cur="${words[CURRENT]}" prev="${words[CURRENT - 1]}" REPLY',
    '  local -a reply',
    ...walk(fn, 'words', '2', 'CURRENT'),
    '  if ((skip)); then',
    `    if ${fn}_value_choices "$cpath" "$prev"; then`,
    `      compadd -- \${=REPLY}`,
    '    elif [[ "$prev" == --host ]]; then',
    '      _files',
    '    else',
    "      _message -e values 'value'",
    '    fi',
    '    return',
    '  fi',
    '  if [[ "$cur" == --*=* ]]; then',
    '    local flag="${cur%%=*}"',
    `    if ${fn}_value_choices "$cpath" "$flag"; then`,
    '      compset -P "*="',
    `      compadd -- \${=REPLY}`,
    '    fi',
    '    return',
    '  fi',
    '  if ((!after_flags)) && [[ "$cur" == -* ]]; then',
    `    ${fn}_describe_flags "$cpath"`,
    "    _describe -t options 'option' reply",
    '    return',
    '  fi',
    `  if ((args == 0)) && ${fn}_is_group "$cpath"; then`,
    `    ${fn}_describe_subcommands "$cpath"`,
    "    _describe -t commands 'command' reply",
    `  elif ((args == 0)) && ${fn}_arg_choices "$cpath"; then`,
    `    compadd -- \${=REPLY}`,
    '  fi',
    '}',
    '',
    '# Autoloaded by compinit from $fpath, this file is the body of the function it defines: run the new',
    '# definition. Sourced or evaluated: register it instead.',
    `if [[ "\${funcstack[1]}" == ${fn} ]]; then`,
    `  ${fn} "$@"`,
    'else',
    `  compdef ${fn} ${program}`,
    'fi',
    '',
  ];
  return lines.join('\n');
}

/**
 * The `completion` command. It needs the whole tree it is part of, hence a function of the root (read when
 * the command runs, so the tree may name this command itself).
 */
export function completionCommand(root: () => CommandGroup): Command {
  return {
    name: 'completion',
    summary: 'Print the shell completion script for bash or zsh (e.g. source <(swarm completion bash))',
    usage: `(${SHELLS.join('|')})`,
    args: { min: 1, max: 1 },
    async run({ io }, _flags, [shell]) {
      if (!SHELLS.includes(shell as Shell)) {
        throw new UsageError(`unsupported shell "${shell}": must be one of: ${SHELLS.join(', ')}`);
      }
      io.stdout.write(completionScript(root(), shell as Shell));
      return 0;
    },
  };
}
