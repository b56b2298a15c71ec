// What a node keeps in its data dir to come back after a restart (`swarmd run`): its identity in the
// swarm, its certificate, and where the managers were last seen. Written atomically.
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { NodeRole } from './api/types.ts';

export interface KnownManager {
  nodeId: string;
  peerId: string;
  addrs: string[];
}

export interface NodeState {
  v: 1;
  nodeId: string;
  clusterId: string;
  role: NodeRole;
  caPublicKey: string;
  /** Membership certificate issued by the cluster CA. */
  cert: string;
  listen: { host: string; port: number };
  advertise: { host: string; port: number } | null;
  meshEncryption: 'noise' | 'tls';
  managers: KnownManager[];
}

export const nodeStatePath = (dataDir: string) => join(dataDir, 'node.json');

export class NodeStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NodeStateError';
  }
}

export async function loadNodeState(dataDir: string): Promise<NodeState | null> {
  const path = nodeStatePath(dataDir);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  let state: NodeState;
  try {
    state = JSON.parse(text) as NodeState;
  } catch (error) {
    throw new NodeStateError(
      `${path} is not valid JSON (${(error as Error).message}); restore it or start over with a new data dir`,
    );
  }
  for (const key of ['nodeId', 'clusterId', 'role', 'caPublicKey', 'cert'] as const) {
    if (typeof state[key] !== 'string' || state[key] === '')
      throw new NodeStateError(`${path}: field "${key}" is missing`);
  }
  if (state.v !== 1) throw new NodeStateError(`${path}: unsupported version ${String(state.v)}`);
  return state;
}

export async function saveNodeState(dataDir: string, state: NodeState): Promise<void> {
  const path = nodeStatePath(dataDir);
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const temp = `${path}.tmp`;
  const handle = await open(temp, 'w', 0o600);
  try {
    await handle.writeFile(`${JSON.stringify(state, null, 2)}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temp, path);
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
