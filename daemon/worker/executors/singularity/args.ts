// The apptainer command line of a task, from its TaskRunSpec. Pure (no files, no processes), so the whole policy
// is read, and tested, in one place:
//
//   exec --containall --cleanenv --userns [--pwd W] [--bind SRC:DST[:ro]]... [--nv|--rocm|--device CDI]... IMAGE CMD ARGS...
//   run  (same flags)                                                                                    IMAGE ARGS...
//
// - `exec` when the spec has a command, `run` (the image's runscript) when it has only args or nothing.
// - --containall: own PID and IPC namespaces, minimal /dev, empty /tmp and $HOME, clean environment.
// - --userns: a user namespace even where the setuid starter is installed, so a task never runs through setuid
//   code (Apptainer >= 1.1 needs none; on those installs the flag is the default anyway).
// - The container's environment is given as APPTAINERENV_K=V in apptainer's own environment rather than as
//   `--env K=V`: `--env` is a pflag string-to-string map that splits a value holding "=" at its commas and
//   strips its quotes, and a command line is readable by every user of the node (/proc/PID/cmdline), which
//   would expose secrets on a shared HPC login node. APPTAINERENV_ variables pass through --cleanenv.
// - Apptainer has no volumes and, unprivileged, no tmpfs mounts: a volume is an error naming the mount; a tmpfs
//   at /tmp or /var/tmp is already there (--containall gives each container private, empty ones), anywhere
//   else it is an error.
// - Never root unless swarmd is root: no setuid, no --fakeroot.
import { ExecutorError, type TaskRunSpec } from '../types.ts';
import { acceleratorOptions } from './gpus.ts';

/** Registry references apptainer pulls (and caches) itself; anything else is a local SIF file or sandbox dir. */
export const REMOTE_IMAGE_SCHEMES = ['docker://', 'oras://', 'library://', 'shub://'] as const;

export type ImageRef = { kind: 'remote'; ref: string } | { kind: 'local'; path: string };

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Where --containall already gives the container a private, empty, writable directory. */
const CONTAINED_TMP = new Set(['/tmp', '/var/tmp']);

function invalid(message: string): ExecutorError {
  return new ExecutorError(message, false);
}

/** A local image must be an absolute path: the task's working dir is no place to resolve one from. */
export function parseImage(image: string): ImageRef {
  const ref = image.trim();
  const schemes = REMOTE_IMAGE_SCHEMES.join(', ');
  if (ref === '')
    throw invalid(`the singularity runtime needs an image: a SIF file, a sandbox directory or ${schemes}`);
  if (REMOTE_IMAGE_SCHEMES.some((scheme) => ref.startsWith(scheme))) return { kind: 'remote', ref };
  if (/^[a-z][a-z0-9+.-]*:\/\//.test(ref))
    throw invalid(`unsupported image reference "${ref}": use a path or ${schemes}`);
  if (!ref.startsWith('/')) {
    throw invalid(
      `image not found: ${ref} (a local image needs an absolute path; for a registry image use docker://${ref})`,
    );
  }
  return { kind: 'local', path: ref };
}

/** Whether a "uid[:gid]" or "name[:group]" user is root. */
export function isRootUser(user: string | undefined): boolean {
  const name = user?.trim().split(':')[0] ?? '';
  return name === 'root' || /^0+$/.test(name);
}

export interface CommandOptions {
  /** Prefix that makes a variable of apptainer's environment one of the container's (APPTAINERENV_, SINGULARITYENV_). */
  envPrefix: string;
  /** Whether swarmd runs as root: only then may a task run as root. */
  swarmdIsRoot: boolean;
}

export interface ContainerCommand {
  /** Arguments after the binary that run the task. */
  args: string[];
  /**
   * Arguments after the binary for a health-check command (append the command): a new container of the same
   * image, binds, working dir and environment, without accelerators.
   */
  execPrefix: string[];
  /** Variables of apptainer's own environment that make the container's (APPTAINERENV_K=V). */
  env: Record<string, string>;
  /** What an operator should know (weaker isolation than asked). */
  warnings: string[];
}

function binds(spec: TaskRunSpec): string[] {
  const flags: string[] = [];
  spec.mounts.forEach((mount, i) => {
    const field = `mounts[${i}]`;
    if (!mount.target.startsWith('/')) throw invalid(`${field}: target "${mount.target}" is not an absolute path`);
    if (mount.type === 'volume') {
      throw invalid(
        `${field}: volume "${mount.source ?? ''}" at ${mount.target}: apptainer has no volumes; bind a host directory instead`,
      );
    }
    if (mount.type === 'tmpfs') {
      if (CONTAINED_TMP.has(mount.target.replace(/\/+$/, ''))) return;
      throw invalid(
        `${field}: tmpfs at ${mount.target}: apptainer cannot mount a tmpfs unprivileged ` +
          '(only /tmp and /var/tmp, which --containall already makes private and empty)',
      );
    }
    const source = mount.source ?? '';
    if (!source.startsWith('/')) throw invalid(`${field}: bind source "${source}" is not an absolute path`);
    // --bind splits its value at "," (several binds) and ":" (src:dst:opts): such paths cannot be expressed.
    for (const path of [source, mount.target]) {
      if (/[,:]/.test(path))
        throw invalid(`${field}: path "${path}" holds "," or ":", which apptainer --bind cannot express`);
    }
    flags.push('--bind', `${source}:${mount.target}${mount.readOnly ? ':ro' : ''}`);
  });
  return flags;
}

function containerEnv(spec: TaskRunSpec, gpuEnv: Record<string, string>, prefix: string): Record<string, string> {
  const env: Record<string, string> = { ...spec.env };
  if (spec.hostPort !== undefined) env.PORT = String(spec.hostPort);
  // The allocation wins over whatever the spec says about devices.
  Object.assign(env, gpuEnv);
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (!ENV_NAME.test(name)) throw invalid(`env: invalid variable name "${name}"`);
    out[`${prefix}${name}`] = value;
  }
  return out;
}

export function buildCommand(spec: TaskRunSpec, options: CommandOptions): ContainerCommand {
  if (isRootUser(spec.user) && !options.swarmdIsRoot) {
    throw invalid(
      `user "${spec.user}": swarmd is not root, and the singularity runtime never gains privileges ` +
        "(no setuid, no --fakeroot); leave the user unset to run as swarmd's user",
    );
  }
  const image = parseImage(spec.image);
  const imageArg = image.kind === 'local' ? image.path : image.ref;
  const common = ['--containall', '--cleanenv', '--userns'];
  if (spec.workdir !== undefined && spec.workdir !== '') {
    if (!spec.workdir.startsWith('/')) throw invalid(`workdir "${spec.workdir}" is not an absolute path`);
    common.push('--pwd', spec.workdir);
  }
  common.push(...binds(spec));
  const gpus = acceleratorOptions(spec.devices);
  const env = containerEnv(spec, gpus.env, options.envPrefix);
  const args =
    spec.command.length > 0
      ? ['exec', ...common, ...gpus.flags, imageArg, ...spec.command, ...spec.args]
      : ['run', ...common, ...gpus.flags, imageArg, ...spec.args];
  return { args, execPrefix: ['exec', ...common, imageArg], env, warnings: gpus.warnings };
}
