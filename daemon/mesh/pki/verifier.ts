// Certificates arrive with every mesh connection and are re-checked on every gated stream. The signature and
// decoding only ever need doing once per certificate string, so a small LRU keeps the decoded claims; the
// checks that depend on the clock or on who presented it (cluster, expiry, PeerId, role) still run each time.
import type { KeyObject } from 'node:crypto';
import { parseCaPublicKey } from './ca.ts';
import { checkClaims, type MembershipClaims, type VerifyOptions, verifySignatureAndDecode } from './certificate.ts';
import { CertificateError } from './errors.ts';

export class CertificateVerifier {
  readonly #key: KeyObject;
  readonly #maxEntries: number;
  /** Map iteration order is insertion order: re-inserting on a hit makes the first key the least recently used. */
  readonly #cache = new Map<string, MembershipClaims>();
  /** Ed25519 verifications done, for tests and metrics. */
  signatureChecks = 0;

  /** One verifier per CA: after a CA rotation, make a new one (the cache is only valid for this key). */
  constructor(caPublicKey: string | KeyObject, options: { maxEntries?: number } = {}) {
    this.#key = typeof caPublicKey === 'string' ? parseCaPublicKey(caPublicKey) : caPublicKey;
    this.#maxEntries = Math.max(1, options.maxEntries ?? 1024);
  }

  get size(): number {
    return this.#cache.size;
  }

  verify(cert: string, options: VerifyOptions): MembershipClaims {
    let claims = this.#cache.get(cert);
    if (claims) {
      this.#cache.delete(cert);
    } else {
      this.signatureChecks++;
      // Failures are not cached: only CA-signed certificates can enter, so junk cannot evict real members.
      claims = verifySignatureAndDecode(this.#key, cert);
    }
    try {
      checkClaims(claims, options);
    } catch (error) {
      // An expired certificate will never be valid again; drop it. Others (wrong peer) may be fine for the
      // rightful owner, so keep them.
      if (!(error instanceof CertificateError && error.code === 'expired')) this.#remember(cert, claims);
      throw error;
    }
    this.#remember(cert, claims);
    return claims;
  }

  #remember(cert: string, claims: MembershipClaims): void {
    this.#cache.set(cert, claims);
    if (this.#cache.size > this.#maxEntries) this.#cache.delete(this.#cache.keys().next().value!);
  }
}
