// The checks of the join handshake (the daemon owns the network part):
//   1. manager -> joiner: { caPublicKey, managerCert }
//   2. joiner checks them with checkManagerBeforeJoin, and only then sends its secret;
//   3. manager checks the secret with authorizeJoin and issues the joiner's certificate.
// Step 2 is what makes the bootstrap trust-on-first-use free: the token pins the CA, and the manager must hold
// a certificate from that CA for the very PeerId the transport authenticated, so an impostor learns nothing.
import type { KeyObject } from 'node:crypto';
import { caFingerprint, parseCaPublicKey } from './ca.ts';
import { checkClaims, type MembershipClaims, type Role, verifySignatureAndDecode } from './certificate.ts';
import { CertificateError, JoinRefusedError } from './errors.ts';
import { parseJoinToken, secretsEqual } from './join-token.ts';

/** What a manager sends a joiner first. */
export interface JoinOffer {
  caPublicKey: string;
  managerCert: string;
}

export interface CheckManagerInput extends JoinOffer {
  token: string;
  /** The PeerId the transport (Noise/TLS) authenticated for the remote end. */
  managerPeerId: string;
  /** Known when rejoining; a first join learns it from the manager's certificate. */
  clusterId?: string;
  now?: number;
  /** How to name the remote in messages, e.g. its multiaddr; defaults to the PeerId. */
  remote?: string;
  clockSkewMs?: number;
}

/**
 * Joiner side. Returns the manager's claims (whose clusterId the joiner adopts). Throws JoinTokenError for a
 * malformed token (the user's input), JoinRefusedError when the remote is not the swarm the token names.
 */
export function checkManagerBeforeJoin(input: CheckManagerInput): MembershipClaims {
  const { fingerprint } = parseJoinToken(input.token);
  const remote = input.remote ?? input.managerPeerId;
  let presented: string;
  let caKey: KeyObject;
  try {
    caKey = parseCaPublicKey(input.caPublicKey);
    presented = caFingerprint(input.caPublicKey);
  } catch (error) {
    throw new JoinRefusedError(`the swarm at ${remote} presented an unusable CA public key`, { cause: error });
  }
  // The fingerprint is public (it is printed in the token), so a plain comparison is fine.
  if (presented !== fingerprint)
    throw new JoinRefusedError(
      `the swarm at ${remote} presented CA fingerprint ${presented} but the token expects ${fingerprint}: ` +
        'wrong swarm or tampered token',
    );
  try {
    const claims = verifySignatureAndDecode(caKey, input.managerCert);
    checkClaims(claims, {
      clusterId: input.clusterId,
      expectedPeerId: input.managerPeerId,
      expectedRole: 'manager',
      now: input.now,
      clockSkewMs: input.clockSkewMs,
    });
    return claims;
  } catch (error) {
    if (!(error instanceof CertificateError)) throw error;
    throw new JoinRefusedError(`the swarm at ${remote} is not a valid manager of that swarm: ${error.message}`, {
      cause: error,
    });
  }
}

export interface AuthorizeJoinInput {
  presentedSecret: string;
  tokens: { worker: string; manager: string };
}

/**
 * Manager side: which role the presented secret grants. Both secrets are always compared, in constant time, and
 * the refusal does not say what was wrong, so a prober learns nothing about either token.
 */
export function authorizeJoin(input: AuthorizeJoinInput): Role {
  const isManager = secretsEqual(input.presentedSecret, input.tokens.manager);
  const isWorker = secretsEqual(input.presentedSecret, input.tokens.worker);
  if (isManager) return 'manager';
  if (isWorker) return 'worker';
  throw new JoinRefusedError('invalid join token');
}

export interface Denylist {
  nodeIds: Set<string>;
  peerIds: Set<string>;
}

/** Removed nodes stay denied until their certificates expire, whichever identity they show up with. */
export function isDenied(claims: Pick<MembershipClaims, 'nodeId' | 'peerId'>, denylist: Denylist): boolean {
  return denylist.nodeIds.has(claims.nodeId) || denylist.peerIds.has(claims.peerId);
}
