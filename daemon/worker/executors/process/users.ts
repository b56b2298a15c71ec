// Which uid/gid a task runs as. Root swarmd: the spec's user, else nobody (65534) unless allowRoot. Non-root
// swarmd cannot switch users, so it runs tasks as itself and refuses a spec that asks for someone else.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ExecutorError } from '../types.ts';

const run = promisify(execFile);

export interface TaskUser {
  uid: number;
  gid: number;
}

export const NOBODY: TaskUser = { uid: 65534, gid: 65534 };

/** Looks a name up through NSS (`getent`), so LDAP/SSSD users of HPC sites resolve too. */
async function getent(database: 'passwd' | 'group', key: string): Promise<string[] | undefined> {
  try {
    const { stdout } = await run('getent', [database, key], { timeout: 5000 });
    return stdout.trim().split('\n')[0]?.split(':');
  } catch {
    return undefined;
  }
}

async function lookupUser(user: string): Promise<TaskUser | undefined> {
  const entry = await getent('passwd', user);
  if (entry === undefined || entry.length < 4) return undefined;
  return { uid: Number(entry[2]), gid: Number(entry[3]) };
}

async function lookupGroup(group: string): Promise<number | undefined> {
  if (/^\d+$/.test(group)) return Number(group);
  const entry = await getent('group', group);
  return entry && entry.length >= 3 ? Number(entry[2]) : undefined;
}

/**
 * "uid", "uid:gid", "name" or "name:group". A numeric uid with no gid takes the user's primary group when
 * the user exists, else gid = uid (never 0, unlike docker's default, so a bare uid gets no root group).
 */
export async function parseUser(spec: string): Promise<TaskUser> {
  const [userPart = '', groupPart] = spec.split(':', 2);
  if (userPart === '') throw new ExecutorError(`invalid user: "${spec}"`, false);
  let uid: number;
  let primaryGid: number | undefined;
  if (/^\d+$/.test(userPart)) {
    uid = Number(userPart);
    primaryGid = (await lookupUser(userPart))?.gid;
  } else {
    const found = await lookupUser(userPart);
    if (found === undefined) throw new ExecutorError(`unknown user: ${userPart}`, false);
    uid = found.uid;
    primaryGid = found.gid;
  }
  let gid = primaryGid ?? uid;
  if (groupPart !== undefined && groupPart !== '') {
    const found = await lookupGroup(groupPart);
    if (found === undefined) throw new ExecutorError(`unknown group: ${groupPart}`, false);
    gid = found;
  }
  return { uid, gid };
}

export function currentUser(): TaskUser {
  return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
}

/** The user a task runs as; `switchUser` tells the caller whether the spawn must change uid/gid. */
export async function resolveTaskUser(
  specUser: string | undefined,
  allowRoot: boolean,
): Promise<TaskUser & { switchUser: boolean }> {
  const self = currentUser();
  if (self.uid === 0) {
    if (specUser === undefined || specUser === '') {
      return allowRoot ? { ...self, switchUser: false } : { ...NOBODY, switchUser: true };
    }
    return { ...(await parseUser(specUser)), switchUser: true };
  }
  if (specUser === undefined || specUser === '') return { ...self, switchUser: false };
  const wanted = await parseUser(specUser).catch(() => undefined);
  const sameGroup = !specUser.includes(':') || wanted?.gid === self.gid;
  if (wanted?.uid !== self.uid || !sameGroup) {
    throw new ExecutorError(
      `cannot run as user "${specUser}": swarmd runs as uid ${self.uid} (not root) and can only run tasks as itself`,
      false,
    );
  }
  return { ...self, switchUser: false };
}
