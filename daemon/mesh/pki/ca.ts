// The swarm's root of trust: one Ed25519 key pair created by the first manager at `swarmd init` and kept in
// the replicated store so every manager can sign. Ed25519 rather than swarmkit's ECDSA P-256: the nodes
// already use Ed25519 for their libp2p identities, signatures are deterministic (no nonce to get wrong),
// 64 bytes long, and fast to verify.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign } from 'node:crypto';
import { base32 } from './encoding.ts';

/** What the daemon persists: both keys as base64 DER (SPKI for the public key, PKCS8 for the private key). */
export interface ClusterCaObject {
  publicKey: string;
  privateKey: string;
}

/** What a node that only verifies needs: the CA's public key as base64 SPKI DER. */
export interface CaPublic {
  publicKey: string;
}

/** Length of a CA fingerprint: 32 base32 characters = 160 bits of SHA-256, ample against second preimages. */
export const FINGERPRINT_LENGTH = 32;

/** Lowercase base32 of SHA-256 over the SPKI DER of the CA public key, truncated to 32 characters. */
export function caFingerprint(publicKey: string): string {
  const der = Buffer.from(publicKey, 'base64');
  return base32(createHash('sha256').update(der).digest()).slice(0, FINGERPRINT_LENGTH);
}

/** Parses a base64 SPKI public key and insists it is Ed25519, so a swapped key type cannot slip through. */
export function parseCaPublicKey(publicKey: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(publicKey, 'base64'), format: 'der', type: 'spki' });
  } catch (error) {
    throw new Error(`CA public key is not a valid SPKI DER key (${error instanceof Error ? error.message : error})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`CA public key is ${key.asymmetricKeyType}, not ed25519`);
  return key;
}

function spki(key: KeyObject): string {
  return key.export({ format: 'der', type: 'spki' }).toString('base64');
}

/**
 * The cluster CA with its private key. The private key lives in a #private field, so JSON.stringify or a log
 * line of the object shows only the public parts; persisting it takes an explicit toObject().
 */
export class ClusterCa {
  readonly publicKey: string;
  readonly fingerprint: string;
  readonly #privateKey: KeyObject;

  private constructor(privateKey: KeyObject) {
    this.#privateKey = privateKey;
    this.publicKey = spki(createPublicKey(privateKey));
    this.fingerprint = caFingerprint(this.publicKey);
  }

  static create(): ClusterCa {
    return new ClusterCa(generateKeyPairSync('ed25519').privateKey);
  }

  /** Restores a CA from its persisted form, checking the two halves belong together (a corrupted store entry
   * must not produce certificates nobody can verify). */
  static fromObject(data: ClusterCaObject): ClusterCa {
    let privateKey: KeyObject;
    try {
      privateKey = createPrivateKey({ key: Buffer.from(data.privateKey, 'base64'), format: 'der', type: 'pkcs8' });
    } catch (error) {
      throw new Error(
        `CA private key is not a valid PKCS8 DER key (${error instanceof Error ? error.message : error})`,
      );
    }
    if (privateKey.asymmetricKeyType !== 'ed25519')
      throw new Error(`CA private key is ${privateKey.asymmetricKeyType}, not ed25519`);
    const ca = new ClusterCa(privateKey);
    if (ca.publicKey !== spki(parseCaPublicKey(data.publicKey)))
      throw new Error('CA public key does not match its private key');
    return ca;
  }

  toObject(): ClusterCaObject {
    return {
      publicKey: this.publicKey,
      privateKey: this.#privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
    };
  }

  toPublic(): CaPublic {
    return { publicKey: this.publicKey };
  }

  /** Raw Ed25519 signature. Callers prefix their message with a purpose string (domain separation) so a
   * signature made for one purpose can never be replayed as another. */
  sign(message: Uint8Array): Buffer {
    return sign(null, message, this.#privateKey);
  }
}

export function createClusterCa(): ClusterCa {
  return ClusterCa.create();
}
