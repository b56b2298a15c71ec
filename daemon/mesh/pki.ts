// The swarm's membership PKI: cluster CA, membership certificates, join tokens and the checks of the join
// handshake. Pure functions and small classes: no network, no files (the caller persists what it gets back).
// See DESIGN.md "Mesh and security".
export {
  type CaPublic,
  ClusterCa,
  type ClusterCaObject,
  caFingerprint,
  createClusterCa,
  FINGERPRINT_LENGTH,
  parseCaPublicKey,
} from './pki/ca.ts';
export {
  type CertificateRequest,
  type ClaimChecks,
  checkClaims,
  DEFAULT_CLOCK_SKEW_MS,
  type IssueOptions,
  issueCertificate,
  MAX_CERTIFICATE_LENGTH,
  type MembershipClaims,
  needsRenewal,
  type Role,
  renewalTime,
  type VerifyOptions,
  verifyCertificate,
} from './pki/certificate.ts';
export {
  CertificateError,
  type CertificateErrorCode,
  JoinRefusedError,
  JoinTokenError,
  type JoinTokenErrorCode,
} from './pki/errors.ts';
export {
  type AuthorizeJoinInput,
  authorizeJoin,
  type CheckManagerInput,
  checkManagerBeforeJoin,
  type Denylist,
  isDenied,
  type JoinOffer,
} from './pki/join.ts';
export {
  formatJoinToken,
  generateJoinSecret,
  type ParsedJoinToken,
  parseJoinToken,
  SECRET_LENGTH,
  secretsEqual,
} from './pki/join-token.ts';
export { CertificateVerifier } from './pki/verifier.ts';
