// The node's persistent libp2p identity: an Ed25519 key in <dataDir>/node.key.
//
// The PeerId derived from this key is what membership certificates, the denylist and every authorization decision
// refer to, so losing or silently replacing it would turn a node into a stranger to its own swarm. That is why a
// file that exists but cannot be parsed is an error, never a reason to generate a fresh key.

import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { link, mkdir, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';

export const NODE_KEY_FILE = 'node.key';

/** Loads the node key from `<dataDir>/node.key`, creating it (mode 0600) on first start. */
export async function loadOrCreateNodeKey(dataDir: string): Promise<PrivateKey> {
  const path = join(dataDir, NODE_KEY_FILE);
  const existing = await readKeyFile(path);
  if (existing !== undefined) return existing;

  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const key = await generateKeyPair('Ed25519');
  const won = await writeNewFileAtomically(dataDir, path, privateKeyToProtobuf(key));
  // Another process created the key between our read and our write: use theirs, so both agree on one identity.
  if (!won) {
    const theirs = await readKeyFile(path);
    if (theirs === undefined) throw new Error(`node key ${path} vanished while it was being created`);
    return theirs;
  }
  return key;
}

/** The key in `path`, undefined when the file does not exist, an Error naming the file when it is unusable. */
async function readKeyFile(path: string): Promise<PrivateKey | undefined> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`cannot read node key ${path}: ${(err as Error).message}`, { cause: err });
  }
  let key: PrivateKey;
  try {
    key = privateKeyFromProtobuf(bytes);
  } catch (err) {
    throw new Error(
      `node key ${path} is corrupt (${(err as Error).message}); restore it from a backup, or remove it to give ` +
        'this node a new identity (it must then rejoin the swarm)',
      { cause: err },
    );
  }
  if (key.type !== 'Ed25519') throw new Error(`node key ${path} is a ${key.type} key, expected Ed25519`);
  return key;
}

/**
 * Writes `data` to a temp file (0600, fsynced), then links it into place and fsyncs the directory, so a crash leaves
 * either no key or a complete one. link() rather than rename() so that two racing creators cannot replace each
 * other's key: the loser gets EEXIST and returns false.
 */
async function writeNewFileAtomically(dir: string, path: string, data: Uint8Array): Promise<boolean> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const file = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    try {
      await file.writeFile(data);
      await file.sync();
    } finally {
      await file.close();
    }
    try {
      await link(tmp, path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    }
  } finally {
    await unlink(tmp).catch(() => {});
  }
  const dirHandle = await open(dir, constants.O_RDONLY);
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
  return true;
}
