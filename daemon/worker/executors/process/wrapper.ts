// The per-task supervisor: a few lines of /bin/sh (a Node process per task would cost ~40 MB each) that
// outlive swarmd and record the program's exit status where a later swarmd finds it.
//
// Process tree of one task (swarmd spawns the first process detached, so it has its own session):
//
//   sh (supervisor, session W)              waits in the foreground, then writes `$?` to fd 3
//   └─ setsid → sh → env → program (pid P)  one PID throughout (each step execs), its own session P
//
// The program runs in the foreground, not with `&`: a non-interactive shell starts background jobs with
// SIGINT and SIGQUIT ignored, which a program would inherit. Its own session means swarmd signals the
// program's process group (-P) without hitting the supervisor, which stays alive to record the status.
// The supervisor traps the usual termination signals with a no-op (the trap is reset in children, unlike an
// ignore) so a stray SIGTERM does not lose the status; `$?` is the exit code, or 128+N for signal N.
//
// The status goes to fd 3, the task dir's `exit` file opened by swarmd: the supervisor needs no access to
// the task dir (it runs as the task's user, which owns only the working dir) and cannot be pointed
// elsewhere; the program does not inherit fd 3.
//
// Before exec'ing the program, P blocks reading one line from stdin (a pipe from swarmd): in that window
// swarmd learns P, moves it into the task's cgroup and records it; only then does it write "go". Should
// swarmd die first, the read sees EOF and P writes "aborted" to the status file without running the program.
//
// The environment reaches the program unchanged through `env -u`, which removes what the shells add
// themselves (PWD, SHLVL, `_`...) unless the spec set those names.
import type { TaskRunSpec } from '../types.ts';

const SHELL_ADDED = ['PWD', 'OLDPWD', 'SHLVL', '_'];

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

export interface WrapperArgs {
  /** argv for spawning /bin/sh (without the "/bin/sh" itself). */
  argv: string[];
}

export function wrapperArgs(options: {
  setsidPath: string;
  envPath: string;
  program: string;
  spec: TaskRunSpec;
  env: Record<string, string>;
}): WrapperArgs {
  const { env, spec } = options;
  // The handshake variable must not clobber a variable of the task's own environment.
  let goVar = 'swarmd_go';
  while (goVar in env) goVar += '_';
  const script = [
    'trap : HUP INT TERM QUIT',
    `${shellQuote(options.setsidPath)} /bin/sh -c 'read -r ${goVar} || { echo aborted >&3; exit 125; }; exec "$@" </dev/null 3>&-' swarmd-task "$@"`,
    'echo $? >&3',
  ].join('\n');
  const unset = SHELL_ADDED.filter((name) => !(name in env)).flatMap((name) => ['-u', name]);
  const commandLine = [options.envPath, ...unset, options.program, ...spec.command.slice(1), ...spec.args];
  // sh -c SCRIPT $0 $1...: $0 names the process in `ps`, "$@" is the program's command line.
  return { argv: ['-c', script, 'swarmd-supervisor', ...commandLine] };
}
