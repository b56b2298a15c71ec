import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  authorizeJoin,
  CertificateError,
  CertificateVerifier,
  ClusterCa,
  caFingerprint,
  checkManagerBeforeJoin,
  createClusterCa,
  formatJoinToken,
  generateJoinSecret,
  isDenied,
  issueCertificate,
  JoinRefusedError,
  JoinTokenError,
  type MembershipClaims,
  needsRenewal,
  parseJoinToken,
  type Role,
  renewalTime,
  secretsEqual,
  verifyCertificate,
} from '../../daemon/mesh/pki.ts';

const HOUR = 3_600_000;
const T0 = Date.parse('2030-01-01T00:00:00Z');
// Real libp2p Ed25519 PeerIds are 52 characters like these.
const MANAGER_PEER = '12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf';
const WORKER_PEER = '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo';
const CLUSTER = 'c7kq2m4hx9p3w5n8r1t6y0v2z';

const ca = createClusterCa();
const request = { clusterId: CLUSTER, nodeId: 'n1', peerId: WORKER_PEER, role: 'worker' as Role };

function issue(overrides: Partial<typeof request> = {}, ttlMs = 24 * HOUR, now = T0, issuer = ca): string {
  return issueCertificate(issuer, { ...request, ...overrides }, { ttlMs, now });
}

function refusal(fn: () => unknown): CertificateError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(CertificateError);
    return error as CertificateError;
  }
  throw new Error('expected a CertificateError');
}

/** Flips one character of the payload or signature part of a certificate, keeping it valid base64url. */
function flip(cert: string, part: 0 | 1, index: number): string {
  const parts = cert.split('.');
  const s = parts[part]!;
  const c = s[index] === 'A' ? 'B' : 'A';
  parts[part] = s.slice(0, index) + c + s.slice(index + 1);
  return parts.join('.');
}

describe('cluster CA', () => {
  it('round-trips through its plain object form and keeps the private key out of JSON', () => {
    const data = ca.toObject();
    expect(Object.keys(data).sort()).toEqual(['privateKey', 'publicKey']);
    const restored = ClusterCa.fromObject(JSON.parse(JSON.stringify(data)));
    expect(restored.publicKey).toBe(ca.publicKey);
    expect(restored.fingerprint).toBe(ca.fingerprint);
    // A certificate issued by the restored CA verifies under the original public key.
    const cert = issue({}, HOUR, T0, restored);
    expect(verifyCertificate(ca.publicKey, cert, { clusterId: CLUSTER, now: T0 }).nodeId).toBe('n1');
    expect(JSON.stringify(ca)).not.toContain(data.privateKey);
  });

  it('refuses a stored CA whose halves do not match, or a non-Ed25519 key', () => {
    const other = createClusterCa().toObject();
    expect(() => ClusterCa.fromObject({ publicKey: other.publicKey, privateKey: ca.toObject().privateKey })).toThrow(
      /does not match/,
    );
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const ecObject = {
      publicKey: ec.publicKey.export({ format: 'der', type: 'spki' }).toString('base64'),
      privateKey: ec.privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
    };
    expect(() => ClusterCa.fromObject(ecObject)).toThrow(/not ed25519/);
    expect(() => verifyCertificate(ecObject.publicKey, issue(), { clusterId: CLUSTER })).toThrow(/not ed25519/);
  });

  it('fingerprints are 32 lowercase base32 characters, stable, and differ between CAs', () => {
    expect(ca.fingerprint).toMatch(/^[a-z2-7]{32}$/);
    expect(caFingerprint(ca.publicKey)).toBe(ca.fingerprint);
    expect(createClusterCa().fingerprint).not.toBe(ca.fingerprint);
  });
});

describe('membership certificates', () => {
  it('round-trip with all claims, and are small', () => {
    const cert = issue({ role: 'manager', peerId: MANAGER_PEER, nodeId: 'node-abc' }, 90 * 24 * HOUR);
    const claims = verifyCertificate(ca.publicKey, cert, { clusterId: CLUSTER, expectedPeerId: MANAGER_PEER, now: T0 });
    expect(claims).toMatchObject({
      v: 1,
      clusterId: CLUSTER,
      nodeId: 'node-abc',
      peerId: MANAGER_PEER,
      role: 'manager',
      issuedAt: T0,
      expiresAt: T0 + 90 * 24 * HOUR,
    });
    expect(claims.serial).toMatch(/^[0-9a-f]{16}$/);
    expect(cert).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{86}$/);
    expect(cert.length).toBeLessThan(300);
    // Serial numbers make every issuance distinct.
    expect(issue()).not.toBe(issue());
  });

  it('refuses malformed certificates', () => {
    const cert = issue();
    for (const bad of [
      '',
      'abc',
      `${cert}.x`,
      `!!!.${cert.split('.')[1]}`,
      `${cert.split('.')[0]}.AAAA`,
      'A'.repeat(2000),
    ]) {
      const error = refusal(() => verifyCertificate(ca.publicKey, bad, { clusterId: CLUSTER, now: T0 }));
      expect(error.code).toBe('malformed');
      expect(error.message).toMatch(/malformed/);
    }
  });

  it('refuses a tampered payload, a tampered signature and another CA with "bad signature"', () => {
    const cert = issue();
    const opts = { clusterId: CLUSTER, now: T0 };
    const cases = [flip(cert, 0, 10), flip(cert, 1, 5)];
    cases.push(issue({}, 24 * HOUR, T0, createClusterCa()));
    // A payload from one certificate with the signature of another.
    cases.push(`${issue({ role: 'manager' }).split('.')[0]}.${cert.split('.')[1]}`);
    for (const bad of cases) {
      const error = refusal(() => verifyCertificate(ca.publicKey, bad, opts));
      expect(error.code).toBe('bad-signature');
      expect(error.message).toMatch(/bad signature/);
    }
  });

  it('refuses another cluster', () => {
    const error = refusal(() => verifyCertificate(ca.publicKey, issue(), { clusterId: 'other', now: T0 }));
    expect(error.code).toBe('wrong-cluster');
    expect(error.message).toMatch(`wrong cluster: issued for ${CLUSTER}, this swarm is other`);
  });

  it('enforces expiry and not-before with clock skew tolerance', () => {
    const cert = issue({}, HOUR);
    const verify = (now: number, clockSkewMs?: number) =>
      verifyCertificate(ca.publicKey, cert, { clusterId: CLUSTER, now, clockSkewMs });
    expect(verify(T0 + HOUR).nodeId).toBe('n1');
    expect(verify(T0 + HOUR + 4 * 60_000).nodeId).toBe('n1'); // within the default 5 min skew
    const expired = refusal(() => verify(T0 + HOUR + 6 * 60_000));
    expect(expired.code).toBe('expired');
    expect(expired.message).toContain(`expired at ${new Date(T0 + HOUR).toISOString()}`);
    expect(refusal(() => verify(T0 + HOUR + 1, 0)).code).toBe('expired');

    expect(verify(T0 - 4 * 60_000).nodeId).toBe('n1');
    const early = refusal(() => verify(T0 - 6 * 60_000));
    expect(early.code).toBe('not-yet-valid');
    expect(early.message).toMatch(/not yet valid/);
  });

  it('refuses a certificate presented by another peer, or for the wrong role', () => {
    const cert = issue();
    const mismatch = refusal(() =>
      verifyCertificate(ca.publicKey, cert, { clusterId: CLUSTER, now: T0, expectedPeerId: MANAGER_PEER }),
    );
    expect(mismatch.code).toBe('peer-mismatch');
    expect(mismatch.message).toContain(`issued to ${WORKER_PEER} but presented by ${MANAGER_PEER}`);
    const role = refusal(() =>
      verifyCertificate(ca.publicKey, cert, { clusterId: CLUSTER, now: T0, expectedRole: 'manager' }),
    );
    expect(role.code).toBe('role-mismatch');
  });

  it('refuses to issue nonsense', () => {
    expect(() => issueCertificate(ca, request, { ttlMs: 0 })).toThrow(/ttlMs/);
    expect(() => issueCertificate(ca, { ...request, nodeId: '' }, { ttlMs: HOUR })).toThrow(/nodeId/);
    expect(() => issueCertificate(ca, { ...request, role: 'admin' as 'worker' }, { ttlMs: HOUR })).toThrow(/role/);
  });

  it('asks for renewal once half the lifetime has passed, later with jitter, never past 80 %', () => {
    const claims = verifyCertificate(ca.publicKey, issue({}, 100 * HOUR), { clusterId: CLUSTER, now: T0 });
    expect(needsRenewal(claims, T0 + 50 * HOUR - 1)).toBe(false);
    expect(needsRenewal(claims, T0 + 50 * HOUR)).toBe(true);
    expect(needsRenewal(claims, T0 + 25 * HOUR, 0.25)).toBe(true);
    expect(renewalTime(claims, 0.5, 0.5)).toBe(T0 + 65 * HOUR);
    expect(renewalTime(claims, 0.5, 1)).toBe(T0 + 80 * HOUR);
    expect(needsRenewal(claims, T0 + 79 * HOUR, 0.5, 1)).toBe(false);
    expect(needsRenewal(claims, T0 + 80 * HOUR, 0.5, 1)).toBe(true);
  });
});

describe('CertificateVerifier', () => {
  it('checks the signature once per certificate but expiry and peer on every use', () => {
    const verifier = new CertificateVerifier(ca.publicKey);
    const cert = issue({}, HOUR);
    const opts = { clusterId: CLUSTER, now: T0, expectedPeerId: WORKER_PEER };
    expect(verifier.verify(cert, opts).nodeId).toBe('n1');
    expect(verifier.verify(cert, opts).nodeId).toBe('n1');
    expect(verifier.signatureChecks).toBe(1);

    expect(refusal(() => verifier.verify(cert, { ...opts, expectedPeerId: MANAGER_PEER })).code).toBe('peer-mismatch');
    expect(refusal(() => verifier.verify(cert, { ...opts, clusterId: 'other' })).code).toBe('wrong-cluster');
    expect(refusal(() => verifier.verify(cert, { ...opts, now: T0 + 2 * HOUR })).code).toBe('expired');
    expect(verifier.signatureChecks).toBe(1);
    // The expired certificate was dropped from the cache.
    expect(verifier.size).toBe(0);
  });

  it('does not cache failures and stays bounded', () => {
    const verifier = new CertificateVerifier(ca.publicKey, { maxEntries: 2 });
    const forged = issue({}, HOUR, T0, createClusterCa());
    expect(refusal(() => verifier.verify(forged, { clusterId: CLUSTER, now: T0 })).code).toBe('bad-signature');
    expect(verifier.size).toBe(0);
    const [a, b, c] = [issue(), issue(), issue()];
    const opts = { clusterId: CLUSTER, now: T0 };
    verifier.verify(a, opts);
    verifier.verify(b, opts);
    verifier.verify(a, opts); // a is now the most recently used
    verifier.verify(c, opts); // evicts b
    expect(verifier.size).toBe(2);
    expect(verifier.signatureChecks).toBe(4); // forged, a, b, c
    verifier.verify(a, opts);
    expect(verifier.signatureChecks).toBe(4);
    verifier.verify(b, opts);
    expect(verifier.signatureChecks).toBe(5);
  });

  it('is fast (timings reported)', () => {
    const certs = Array.from({ length: 500 }, () => issue());
    const opts = { clusterId: CLUSTER, now: T0 };
    const fromKey = (n: number) => {
      const start = performance.now();
      for (const cert of certs.slice(0, n)) verifyCertificate(ca.publicKey, cert, opts);
      return ((performance.now() - start) * 1000) / n;
    };
    fromKey(50); // warm-up
    const uncached = fromKey(certs.length);
    const verifier = new CertificateVerifier(ca.publicKey, { maxEntries: 1000 });
    let start = performance.now();
    for (const cert of certs) verifier.verify(cert, opts);
    const firstUse = ((performance.now() - start) * 1000) / certs.length;
    start = performance.now();
    for (let i = 0; i < 10; i++) for (const cert of certs) verifier.verify(cert, opts);
    const cached = ((performance.now() - start) * 1000) / (10 * certs.length);
    console.log(
      `pki: certificate ${certs[0]!.length} chars; verify per cert: uncached ${uncached.toFixed(1)} µs ` +
        `(incl. key parse), verifier first use ${firstUse.toFixed(1)} µs, cached ${cached.toFixed(2)} µs`,
    );
    expect(verifier.signatureChecks).toBe(certs.length);
    expect(cached).toBeLessThan(firstUse);
  });
});

describe('join tokens', () => {
  it('format and parse round-trip', () => {
    const secret = generateJoinSecret();
    expect(secret).toMatch(/^[a-z2-7]{26}$/);
    expect(generateJoinSecret()).not.toBe(secret);
    const token = formatJoinToken(ca.fingerprint, secret);
    expect(token).toBe(`SWMTKN-1-${ca.fingerprint}-${secret}`);
    expect(parseJoinToken(token)).toEqual({ fingerprint: ca.fingerprint, secret });
    expect(parseJoinToken(` ${token}\n`)).toEqual({ fingerprint: ca.fingerprint, secret }); // pasted with a newline
  });

  it('names the part that is wrong and never echoes the secret', () => {
    const fp = ca.fingerprint;
    const secret = generateJoinSecret();
    const cases: [string, string, RegExp][] = [
      ['', 'prefix', /must start with SWMTKN-/],
      [`SWMTKM-1-${fp}-${secret}`, 'prefix', /must start with SWMTKN-/],
      [`swmtkn-1-${fp}-${secret}`, 'prefix', /must start with SWMTKN-/],
      [`SWMTKN-2-${fp}-${secret}`, 'version', /unsupported version/],
      [`SWMTKN-2-1-${fp}-${secret}`, 'version', /unsupported version/],
      ['SWMTKN', 'version', /unsupported version/],
      [`SWMTKN-1-${fp}`, 'format', /expected SWMTKN-1-<fingerprint>-<secret>, found 3 parts/],
      [`SWMTKN-1-${fp}-${secret}-x`, 'format', /found 5 parts/],
      [`SWMTKN-1-${fp.slice(1)}-${secret}`, 'fingerprint', /fingerprint is 31 characters, expected 32/],
      [`SWMTKN-1-${fp}a-${secret}`, 'fingerprint', /fingerprint is 33 characters/],
      [`SWMTKN-1-${fp.toUpperCase()}-${secret}`, 'fingerprint', /fingerprint must be lowercase base32/],
      [`SWMTKN-1-${fp.slice(0, 31)}1-${secret}`, 'fingerprint', /fingerprint must be lowercase base32/],
      [`SWMTKN-1-${fp}-${secret.slice(2)}`, 'secret', /secret is 24 characters, expected 26/],
      [`SWMTKN-1-${fp}-`, 'secret', /secret is 0 characters/],
      [`SWMTKN-1-${fp}-${secret.slice(0, 25)}0`, 'secret', /secret must be lowercase base32/],
      [`SWMTKN-1-${fp}-${secret.slice(0, 25)}=`, 'secret', /secret must be lowercase base32/],
    ];
    for (const [token, code, message] of cases) {
      let caught: unknown;
      try {
        parseJoinToken(token);
      } catch (error) {
        caught = error;
      }
      expect(caught, token).toBeInstanceOf(JoinTokenError);
      expect((caught as JoinTokenError).code, token).toBe(code);
      expect((caught as JoinTokenError).message, token).toMatch(message);
      expect((caught as JoinTokenError).message).not.toContain(secret.slice(0, 20));
    }
    expect(() => formatJoinToken('short', secret)).toThrow(JoinTokenError);
  });

  it('compares secrets in constant time, different lengths included', () => {
    const s = generateJoinSecret();
    expect(secretsEqual(s, s)).toBe(true);
    expect(secretsEqual(s, `${s.slice(0, 25)}${s[25] === 'a' ? 'b' : 'a'}`)).toBe(false);
    expect(secretsEqual(s, s.slice(0, 10))).toBe(false);
    expect(secretsEqual('', s)).toBe(false);
    expect(secretsEqual('', '')).toBe(true);
  });
});

describe('join handshake', () => {
  const managerCert = issue({ nodeId: 'm1', peerId: MANAGER_PEER, role: 'manager' }, 90 * 24 * HOUR);
  const token = formatJoinToken(ca.fingerprint, generateJoinSecret());
  const offer = { token, caPublicKey: ca.publicKey, managerCert, managerPeerId: MANAGER_PEER, now: T0 };

  function refused(input: Parameters<typeof checkManagerBeforeJoin>[0]): JoinRefusedError {
    try {
      checkManagerBeforeJoin(input);
    } catch (error) {
      expect(error).toBeInstanceOf(JoinRefusedError);
      return error as JoinRefusedError;
    }
    throw new Error('expected a JoinRefusedError');
  }

  it('accepts the right swarm and returns the manager claims', () => {
    const claims: MembershipClaims = checkManagerBeforeJoin(offer);
    expect(claims).toMatchObject({ clusterId: CLUSTER, nodeId: 'm1', role: 'manager', peerId: MANAGER_PEER });
    expect(checkManagerBeforeJoin({ ...offer, clusterId: CLUSTER }).nodeId).toBe('m1');
  });

  it('refuses a swarm whose CA does not match the token fingerprint', () => {
    const impostor = createClusterCa();
    const impostorCert = issue({ peerId: MANAGER_PEER, role: 'manager' }, HOUR, T0, impostor);
    const error = refused({
      ...offer,
      caPublicKey: impostor.publicKey,
      managerCert: impostorCert,
      remote: '/ip4/10.0.0.9/tcp/4242',
    });
    expect(error.message).toBe(
      `the swarm at /ip4/10.0.0.9/tcp/4242 presented CA fingerprint ${impostor.fingerprint} but the token expects ` +
        `${ca.fingerprint}: wrong swarm or tampered token`,
    );
    expect(refused({ ...offer, caPublicKey: 'bm90IGEga2V5' }).message).toMatch(/unusable CA public key/);
  });

  it('refuses a manager certificate that is forged, for another peer, not a manager, expired or another cluster', () => {
    const forged = issue({ peerId: MANAGER_PEER, role: 'manager' }, HOUR, T0, createClusterCa());
    expect(refused({ ...offer, managerCert: forged }).message).toMatch(/bad signature/);
    expect(refused({ ...offer, managerPeerId: WORKER_PEER }).message).toMatch(/peer mismatch/);
    const workerCert = issue({ peerId: MANAGER_PEER });
    expect(refused({ ...offer, managerCert: workerCert }).message).toMatch(/role mismatch/);
    expect(refused({ ...offer, now: T0 + 100 * 24 * HOUR }).message).toMatch(/expired/);
    const error = refused({ ...offer, clusterId: 'other' });
    expect(error.message).toMatch(/wrong cluster/);
    expect(error.cause).toBeInstanceOf(CertificateError);
  });

  it('lets a malformed token surface as JoinTokenError', () => {
    expect(() => checkManagerBeforeJoin({ ...offer, token: 'SWMTKN-1-abc' })).toThrow(JoinTokenError);
  });

  it('manager grants the role of the matching secret and refuses others without saying why', () => {
    const tokens = { worker: generateJoinSecret(), manager: generateJoinSecret() };
    expect(authorizeJoin({ presentedSecret: tokens.worker, tokens })).toBe('worker');
    expect(authorizeJoin({ presentedSecret: tokens.manager, tokens })).toBe('manager');
    for (const presentedSecret of [generateJoinSecret(), '', tokens.worker.slice(0, 10), `${tokens.manager}x`]) {
      expect(() => authorizeJoin({ presentedSecret, tokens })).toThrow(new JoinRefusedError('invalid join token'));
    }
  });
});

describe('denylist', () => {
  it('denies by node ID or PeerId', () => {
    const claims = { nodeId: 'n1', peerId: WORKER_PEER };
    expect(isDenied(claims, { nodeIds: new Set(), peerIds: new Set() })).toBe(false);
    expect(isDenied(claims, { nodeIds: new Set(['n1']), peerIds: new Set() })).toBe(true);
    expect(isDenied(claims, { nodeIds: new Set(['n2']), peerIds: new Set([WORKER_PEER]) })).toBe(true);
  });
});
