// Membership certificates: a CA signature over (cluster, node ID, PeerId, role, validity). They travel in every
// mesh handshake, so they are compact: a msgpack array (no field names) and a raw 64-byte Ed25519 signature,
// both base64url, joined by '.' (about 250 characters with a real PeerId). No X.509: nothing here needs
// chains, extensions or ASN.1 parsing of hostile input.
import { type KeyObject, randomBytes, verify } from 'node:crypto';
import { Packr } from 'msgpackr';
import { type ClusterCa, parseCaPublicKey } from './ca.ts';
import { base64url, fromBase64url } from './encoding.ts';
import { CertificateError } from './errors.ts';

export type Role = 'manager' | 'worker';

export interface MembershipClaims {
  v: 1;
  clusterId: string;
  nodeId: string;
  /** libp2p PeerId (string form) of the node's identity key: the handshake proves possession of that key. */
  peerId: string;
  role: Role;
  /** Random, so two certificates for the same node are distinguishable in logs and audits. */
  serial: string;
  /** ms since the epoch. */
  issuedAt: number;
  expiresAt: number;
}

export type CertificateRequest = Pick<MembershipClaims, 'clusterId' | 'nodeId' | 'peerId' | 'role'>;

export interface IssueOptions {
  ttlMs: number;
  now?: number;
}

/** The checks that depend on who presents a certificate and when. */
export interface ClaimChecks {
  /** Optional only for checkClaims: the joiner learns the cluster ID from the manager's certificate (safe, since
   * the token pins the CA). Everyone else must pass it. */
  clusterId?: string;
  /** The PeerId the transport authenticated; a certificate presented by any other peer is stolen or misrouted. */
  expectedPeerId?: string;
  expectedRole?: Role;
  now?: number;
  /** Tolerated clock difference between the issuer and this node, on both ends of the validity window. */
  clockSkewMs?: number;
}

export interface VerifyOptions extends ClaimChecks {
  clusterId: string;
}

export const DEFAULT_CLOCK_SKEW_MS = 5 * 60_000;
/** Upper bound on a certificate string; anything longer is refused before any decoding. */
export const MAX_CERTIFICATE_LENGTH = 1024;
const MAX_FIELD_LENGTH = 128;
const SIGNATURE_BYTES = 64;
/** Signed together with the payload so a CA signature made for any other purpose never passes as a certificate. */
const DOMAIN = Buffer.from('swarmd/membership-certificate/v1\n');

const packr = new Packr({ useRecords: false, moreTypes: false });

function checkField(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_FIELD_LENGTH;
}

function signedMessage(payload: Uint8Array): Buffer {
  return Buffer.concat([DOMAIN, payload]);
}

export function issueCertificate(ca: ClusterCa, request: CertificateRequest, options: IssueOptions): string {
  for (const name of ['clusterId', 'nodeId', 'peerId'] as const) {
    if (!checkField(request[name]))
      throw new Error(`cannot issue certificate: ${name} must be 1-${MAX_FIELD_LENGTH} characters`);
  }
  if (request.role !== 'manager' && request.role !== 'worker')
    throw new Error(`cannot issue certificate: role must be manager or worker, not ${String(request.role)}`);
  if (!Number.isSafeInteger(options.ttlMs) || options.ttlMs <= 0)
    throw new Error(`cannot issue certificate: ttlMs must be a positive integer, not ${options.ttlMs}`);
  const issuedAt = Math.floor(options.now ?? Date.now());
  const claims: MembershipClaims = {
    v: 1,
    clusterId: request.clusterId,
    nodeId: request.nodeId,
    peerId: request.peerId,
    role: request.role,
    serial: randomBytes(8).toString('hex'),
    issuedAt,
    expiresAt: issuedAt + options.ttlMs,
  };
  const payload = packr.pack([
    claims.v,
    claims.clusterId,
    claims.nodeId,
    claims.peerId,
    claims.role,
    claims.serial,
    claims.issuedAt,
    claims.expiresAt,
  ]);
  return `${base64url(payload)}.${base64url(ca.sign(signedMessage(payload)))}`;
}

/**
 * Checks the signature, then decodes. The signature comes first on purpose: bytes from the network are only
 * handed to the msgpack decoder once the CA vouched for them. Exported for CertificateVerifier, which caches
 * the result and reruns checkClaims on every use.
 */
export function verifySignatureAndDecode(caKey: KeyObject, cert: string): MembershipClaims {
  if (typeof cert !== 'string' || cert.length === 0) throw new CertificateError('malformed', 'malformed: empty');
  if (cert.length > MAX_CERTIFICATE_LENGTH)
    throw new CertificateError('malformed', `malformed: ${cert.length} characters, at most ${MAX_CERTIFICATE_LENGTH}`);
  const parts = cert.split('.');
  if (parts.length !== 2) throw new CertificateError('malformed', 'malformed: expected <payload>.<signature>');
  const payload = fromBase64url(parts[0]!);
  const signature = fromBase64url(parts[1]!);
  if (!payload || payload.length === 0) throw new CertificateError('malformed', 'malformed: payload is not base64url');
  if (!signature || signature.length !== SIGNATURE_BYTES)
    throw new CertificateError('malformed', `malformed: signature is not ${SIGNATURE_BYTES} bytes of base64url`);
  if (!verify(null, signedMessage(payload), caKey, signature))
    throw new CertificateError('bad-signature', 'bad signature: not issued by this swarm CA, or altered');
  return decodeClaims(payload);
}

function decodeClaims(payload: Uint8Array): MembershipClaims {
  // Signed by our CA, so a failure here means a version or bug mismatch, not an attack; still never crash.
  let value: unknown;
  try {
    value = packr.unpack(payload);
  } catch {
    throw new CertificateError('malformed', 'malformed: undecodable payload');
  }
  if (!Array.isArray(value) || value.length !== 8) throw new CertificateError('malformed', 'malformed: payload shape');
  const [v, clusterId, nodeId, peerId, role, serial, issuedAt, expiresAt] = value as unknown[];
  if (v !== 1) throw new CertificateError('malformed', `malformed: unsupported version ${String(v)}`);
  if (!checkField(clusterId) || !checkField(nodeId) || !checkField(peerId))
    throw new CertificateError('malformed', 'malformed: bad identity fields');
  if (role !== 'manager' && role !== 'worker') throw new CertificateError('malformed', 'malformed: bad role');
  if (!checkField(serial)) throw new CertificateError('malformed', 'malformed: bad serial');
  if (
    !Number.isSafeInteger(issuedAt) ||
    !Number.isSafeInteger(expiresAt) ||
    (expiresAt as number) <= (issuedAt as number)
  )
    throw new CertificateError('malformed', 'malformed: bad validity window');
  // Frozen: CertificateVerifier hands the same object to every caller.
  return Object.freeze({
    v,
    clusterId,
    nodeId,
    peerId,
    role,
    serial,
    issuedAt: issuedAt as number,
    expiresAt: expiresAt as number,
  });
}

/** The checks that depend on the caller or the clock, run on every use, cached or not. */
export function checkClaims(claims: MembershipClaims, options: ClaimChecks): void {
  const now = options.now ?? Date.now();
  const skew = options.clockSkewMs ?? DEFAULT_CLOCK_SKEW_MS;
  if (options.clusterId !== undefined && claims.clusterId !== options.clusterId)
    throw new CertificateError(
      'wrong-cluster',
      `wrong cluster: issued for ${claims.clusterId}, this swarm is ${options.clusterId}`,
    );
  if (now > claims.expiresAt + skew)
    throw new CertificateError(
      'expired',
      `expired at ${new Date(claims.expiresAt).toISOString()} (now ${new Date(now).toISOString()})`,
    );
  if (now < claims.issuedAt - skew)
    throw new CertificateError(
      'not-yet-valid',
      `not yet valid: issued at ${new Date(claims.issuedAt).toISOString()} (now ${new Date(now).toISOString()}; check clocks)`,
    );
  if (options.expectedPeerId !== undefined && claims.peerId !== options.expectedPeerId)
    throw new CertificateError(
      'peer-mismatch',
      `peer mismatch: issued to ${claims.peerId} but presented by ${options.expectedPeerId}`,
    );
  if (options.expectedRole !== undefined && claims.role !== options.expectedRole)
    throw new CertificateError(
      'role-mismatch',
      `role mismatch: certificate is for a ${claims.role}, not a ${options.expectedRole}`,
    );
}

/** Verifies a certificate from scratch. For certificates seen repeatedly use CertificateVerifier. */
export function verifyCertificate(
  caPublicKey: string | KeyObject,
  cert: string,
  options: VerifyOptions,
): MembershipClaims {
  const key = typeof caPublicKey === 'string' ? parseCaPublicKey(caPublicKey) : caPublicKey;
  const claims = verifySignatureAndDecode(key, cert);
  checkClaims(claims, options);
  return claims;
}

/** Highest renewal point when jitter is used: swarmkit renews at a random 50-80 % of the lifetime. */
const MAX_RENEWAL_FRACTION = 0.8;

/**
 * When to renew, in ms since the epoch. With jitter (a number in [0, 1], drawn once per certificate by the
 * caller so the answer is stable) the point moves from `fraction` towards 80 % of the lifetime, so nodes
 * issued together do not all come back to the CA at the same moment.
 */
export function renewalTime(claims: MembershipClaims, fraction = 0.5, jitter = 0): number {
  const j = Math.min(Math.max(jitter, 0), 1);
  const f = fraction + j * Math.max(MAX_RENEWAL_FRACTION - fraction, 0);
  return claims.issuedAt + Math.floor((claims.expiresAt - claims.issuedAt) * f);
}

export function needsRenewal(claims: MembershipClaims, now: number, fraction = 0.5, jitter = 0): boolean {
  return now >= renewalTime(claims, fraction, jitter);
}
