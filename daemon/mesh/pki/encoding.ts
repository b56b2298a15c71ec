// Text encodings used by the PKI. Base32 (RFC 4648 alphabet, lowercase, no padding) for what people copy
// around (fingerprints, join secrets): case-insensitive-looking, no ambiguous 0/1/8/9, no separators that
// clash with the token's '-'. Base64url for certificates, which only machines handle.

const BASE32_ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

/** Matches a non-empty string of lowercase RFC 4648 base32 characters. */
export const BASE32_RE = /^[a-z2-7]+$/;

export function base32(bytes: Uint8Array): string {
  let out = '';
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = ((buffer << 8) | byte) & 0xffff; // at most 12 live bits, keep it small
    bits += 8;
    while (bits >= 5) {
      out += BASE32_ALPHABET[(buffer >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32_ALPHABET[(buffer << (5 - bits)) & 31];
  return out;
}

export function base64url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url');
}

const BASE64URL_RE = /^[A-Za-z0-9_-]*$/;

/** Strict base64url decode: Buffer.from(..., 'base64url') silently skips bad characters, we refuse them. */
export function fromBase64url(text: string): Buffer | undefined {
  if (!BASE64URL_RE.test(text) || text.length % 4 === 1) return undefined;
  return Buffer.from(text, 'base64url');
}
