// Errors of the membership PKI. Each carries a machine-readable `code` for callers (metrics, retry
// decisions) and a message a person can act on. None of them ever includes a join secret.

export type CertificateErrorCode =
  | 'malformed'
  | 'bad-signature'
  | 'wrong-cluster'
  | 'expired'
  | 'not-yet-valid'
  | 'peer-mismatch'
  | 'role-mismatch';

/** A membership certificate was refused. */
export class CertificateError extends Error {
  readonly code: CertificateErrorCode;
  constructor(code: CertificateErrorCode, message: string) {
    super(`membership certificate refused: ${message}`);
    this.name = 'CertificateError';
    this.code = code;
  }
}

export type JoinTokenErrorCode = 'prefix' | 'version' | 'format' | 'fingerprint' | 'secret';

/** A join token does not have the `SWMTKN-1-<fingerprint>-<secret>` shape. */
export class JoinTokenError extends Error {
  readonly code: JoinTokenErrorCode;
  constructor(code: JoinTokenErrorCode, message: string) {
    super(`invalid join token: ${message}`);
    this.name = 'JoinTokenError';
    this.code = code;
  }
}

/** One side of the join handshake refused to go on. */
export class JoinRefusedError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'JoinRefusedError';
  }
}
