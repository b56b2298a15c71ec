// Join tokens, shaped like Docker's: SWMTKN-1-<CA fingerprint>-<secret>. The fingerprint pins the swarm's CA
// so the joiner can check it reached the right swarm before revealing anything; the secret proves the joiner
// may join with the token's role (one token per role, each rotatable on its own).
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { FINGERPRINT_LENGTH } from './ca.ts';
import { BASE32_RE, base32 } from './encoding.ts';
import { JoinTokenError } from './errors.ts';

const PREFIX = 'SWMTKN';
const VERSION = '1';
/** 16 random bytes (128 bits) in base32. */
export const SECRET_LENGTH = 26;

export interface ParsedJoinToken {
  fingerprint: string;
  secret: string;
}

export function generateJoinSecret(): string {
  return base32(randomBytes(16));
}

export function formatJoinToken(fingerprint: string, secret: string): string {
  checkFingerprint(fingerprint);
  checkSecret(secret);
  return `${PREFIX}-${VERSION}-${fingerprint}-${secret}`;
}

/** Messages name the faulty part but never echo the token: it is a credential and errors end up in logs. */
export function parseJoinToken(token: string): ParsedJoinToken {
  const parts = token.trim().split('-');
  if (parts[0] !== PREFIX) throw new JoinTokenError('prefix', `must start with ${PREFIX}-`);
  if (parts.length < 2 || parts[1] !== VERSION)
    throw new JoinTokenError('version', `unsupported version (this swarmd understands ${PREFIX}-${VERSION}-)`);
  if (parts.length !== 4)
    throw new JoinTokenError(
      'format',
      `expected ${PREFIX}-${VERSION}-<fingerprint>-<secret>, found ${parts.length} parts`,
    );
  const fingerprint = parts[2]!;
  const secret = parts[3]!;
  checkFingerprint(fingerprint);
  checkSecret(secret);
  return { fingerprint, secret };
}

function checkFingerprint(fingerprint: string): void {
  if (fingerprint.length !== FINGERPRINT_LENGTH)
    throw new JoinTokenError(
      'fingerprint',
      `CA fingerprint is ${fingerprint.length} characters, expected ${FINGERPRINT_LENGTH} (truncated token?)`,
    );
  if (!BASE32_RE.test(fingerprint))
    throw new JoinTokenError('fingerprint', 'CA fingerprint must be lowercase base32 (a-z, 2-7)');
}

function checkSecret(secret: string): void {
  if (secret.length !== SECRET_LENGTH)
    throw new JoinTokenError(
      'secret',
      `secret is ${secret.length} characters, expected ${SECRET_LENGTH} (truncated token?)`,
    );
  if (!BASE32_RE.test(secret)) throw new JoinTokenError('secret', 'secret must be lowercase base32 (a-z, 2-7)');
}

/**
 * Constant-time comparison of two secrets. Both are hashed first so the buffers given to timingSafeEqual always
 * have the same length: different lengths give false, in the same time, instead of throwing.
 */
export function secretsEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a, 'utf8').digest();
  const hb = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(ha, hb);
}
