// What the process runtime reads from /proc: a process's identity (PID + start time, so a reused PID is never
// mistaken for the task), its children and session, and its resident memory. Linux only, like the runtime.
import { readdirSync, readFileSync } from 'node:fs';

export interface ProcStat {
  /** R, S, D, Z (zombie), X (dead), T... */
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  /** Clock ticks since boot: with the PID, identifies one process for the lifetime of the boot. */
  startTime: number;
}

export function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may itself hold spaces and parentheses.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  if (state === undefined || fields.length < 20) return undefined;
  return {
    state,
    ppid: Number(fields[1]),
    pgrp: Number(fields[2]),
    session: Number(fields[3]),
    startTime: Number(fields[19]),
  };
}

/** Whether the process that had this PID and start time still runs (a zombie has finished). */
export function isRunning(pid: number, startTime: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  const stat = readProcStat(pid);
  return stat !== undefined && stat.startTime === startTime && stat.state !== 'Z' && stat.state !== 'X';
}

let cachedBootId: string | undefined;

/** Changes on every boot: PIDs and start times recorded under another boot identify nothing. */
export function bootId(): string {
  cachedBootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return cachedBootId;
}

function allPids(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (Number.isInteger(pid) && pid > 0) pids.push(pid);
  }
  return pids;
}

/** Child PIDs of a process: /proc/PID/task/PID/children where the kernel has it, else a scan of /proc. */
export function childrenOf(pid: number): number[] {
  try {
    const text = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
    return text === '' ? [] : text.split(' ').map(Number);
  } catch {
    return allPids().filter((p) => readProcStat(p)?.ppid === pid);
  }
}

/** Every process of each given session (a task's program is a session leader; its children stay in it). */
export function sessionMembers(sessions: Set<number>): Map<number, number[]> {
  const members = new Map<number, number[]>();
  for (const pid of allPids()) {
    const stat = readProcStat(pid);
    if (stat === undefined || stat.state === 'Z' || !sessions.has(stat.session)) continue;
    const list = members.get(stat.session);
    if (list) list.push(pid);
    else members.set(stat.session, [pid]);
  }
  return members;
}

/** Resident set size in bytes (VmRSS), or 0 for a process that is gone or a kernel thread. */
export function residentBytes(pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}
