// PROXY protocol version 2 (haproxy.org/download/2.9/doc/proxy-protocol.txt): the binary header a proxy sends
// first on a connection to a backend, so that the backend learns the real client address. We send TCP over IPv4,
// TCP over IPv6, and LOCAL (no address: health checks and the like). The decoder is for tests and for backends
// written in Node; it validates strictly and throws ProxyProtocolError on anything malformed.
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';

/** The 12-byte signature every v2 header starts with. */
export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const FIXED_LENGTH = 16;
const VERSION_2 = 0x20;
const CMD_LOCAL = 0x00;
const CMD_PROXY = 0x01;
const FAM_UNSPEC = 0x00;
const FAM_TCP4 = 0x11;
const FAM_TCP6 = 0x21;
const ADDR_LEN_TCP4 = 12;
const ADDR_LEN_TCP6 = 36;
/** The largest header the format can express: the length field is 16 bits. */
export const PROXY_V2_MAX_LENGTH = FIXED_LENGTH + 0xffff;

export class ProxyProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProxyProtocolError';
  }
}

export interface ProxyAddresses {
  sourceAddress: string;
  sourcePort: number;
  destinationAddress: string;
  destinationPort: number;
}

export interface ProxyTlv {
  type: number;
  value: Buffer;
}

export interface ProxyHeader {
  command: 'local' | 'proxy';
  family: 'unspec' | 'tcp4' | 'tcp6';
  /** Present for tcp4 and tcp6. For LOCAL the receiver must ignore them (and use the connection's own). */
  addresses?: ProxyAddresses;
  tlvs: ProxyTlv[];
  /** Bytes the header took; the application's data starts there. */
  length: number;
}

/**
 * A PROXY v2 header for a TCP connection, or a LOCAL one when `addresses` is null. Both IPv4 (plain or
 * IPv4-mapped IPv6, as a dual-stack socket reports them) gives TCP4; otherwise TCP6, with any IPv4 address mapped.
 */
export function encodeProxyV2(addresses: ProxyAddresses | null): Buffer {
  if (addresses === null) {
    const header = Buffer.alloc(FIXED_LENGTH);
    PROXY_V2_SIGNATURE.copy(header, 0);
    header[12] = VERSION_2 | CMD_LOCAL;
    header[13] = FAM_UNSPEC;
    return header;
  }
  checkPort(addresses.sourcePort);
  checkPort(addresses.destinationPort);
  const source4 = asIPv4(addresses.sourceAddress);
  const destination4 = asIPv4(addresses.destinationAddress);
  const v4 = source4 !== undefined && destination4 !== undefined;
  const addressLength = v4 ? ADDR_LEN_TCP4 : ADDR_LEN_TCP6;
  const header = Buffer.alloc(FIXED_LENGTH + addressLength);
  PROXY_V2_SIGNATURE.copy(header, 0);
  header[12] = VERSION_2 | CMD_PROXY;
  header[13] = v4 ? FAM_TCP4 : FAM_TCP6;
  header.writeUInt16BE(addressLength, 14);
  if (v4) {
    writeIPv4(source4, header, 16);
    writeIPv4(destination4, header, 20);
    header.writeUInt16BE(addresses.sourcePort, 24);
    header.writeUInt16BE(addresses.destinationPort, 26);
  } else {
    writeIPv6(addresses.sourceAddress, header, 16);
    writeIPv6(addresses.destinationAddress, header, 32);
    header.writeUInt16BE(addresses.sourcePort, 48);
    header.writeUInt16BE(addresses.destinationPort, 50);
  }
  return header;
}

/**
 * Decodes a header at the start of `data`. Returns null while more bytes are needed (everything so far is a valid
 * beginning); throws ProxyProtocolError as soon as the bytes cannot be a valid header, or it would exceed maxLength.
 */
export function decodeProxyV2(data: Uint8Array, maxLength = PROXY_V2_MAX_LENGTH): ProxyHeader | null {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const signatureBytes = Math.min(buf.length, PROXY_V2_SIGNATURE.length);
  if (!buf.subarray(0, signatureBytes).equals(PROXY_V2_SIGNATURE.subarray(0, signatureBytes))) {
    throw new ProxyProtocolError('not a PROXY protocol v2 header (bad signature)');
  }
  if (buf.length < FIXED_LENGTH) return null;
  const verCmd = buf[12]!;
  if ((verCmd & 0xf0) !== VERSION_2) throw new ProxyProtocolError(`unsupported version ${verCmd >> 4}`);
  const cmd = verCmd & 0x0f;
  if (cmd !== CMD_LOCAL && cmd !== CMD_PROXY) throw new ProxyProtocolError(`unknown command ${cmd}`);
  const fam = buf[13]!;
  if (fam !== FAM_UNSPEC && fam !== FAM_TCP4 && fam !== FAM_TCP6) {
    throw new ProxyProtocolError(`unsupported address family/protocol 0x${fam.toString(16).padStart(2, '0')}`);
  }
  // A PROXY command must say where the connection came from.
  if (cmd === CMD_PROXY && fam === FAM_UNSPEC) throw new ProxyProtocolError('PROXY command without addresses');
  const bodyLength = buf.readUInt16BE(14);
  const length = FIXED_LENGTH + bodyLength;
  if (length > maxLength) throw new ProxyProtocolError(`header of ${length} bytes exceeds the limit of ${maxLength}`);
  const addressLength = fam === FAM_TCP4 ? ADDR_LEN_TCP4 : fam === FAM_TCP6 ? ADDR_LEN_TCP6 : 0;
  if (bodyLength < addressLength) {
    throw new ProxyProtocolError(`length ${bodyLength} too short for the address block (${addressLength})`);
  }
  if (buf.length < length) return null;

  let addresses: ProxyAddresses | undefined;
  if (fam === FAM_TCP4) {
    addresses = {
      sourceAddress: readIPv4(buf, 16),
      destinationAddress: readIPv4(buf, 20),
      sourcePort: buf.readUInt16BE(24),
      destinationPort: buf.readUInt16BE(26),
    };
  } else if (fam === FAM_TCP6) {
    addresses = {
      sourceAddress: readIPv6(buf, 16),
      destinationAddress: readIPv6(buf, 32),
      sourcePort: buf.readUInt16BE(48),
      destinationPort: buf.readUInt16BE(50),
    };
  }
  const tlvs = decodeTlvs(buf.subarray(FIXED_LENGTH + addressLength, length));
  const family = fam === FAM_TCP4 ? 'tcp4' : fam === FAM_TCP6 ? 'tcp6' : 'unspec';
  const header: ProxyHeader = { command: cmd === CMD_PROXY ? 'proxy' : 'local', family, tlvs, length };
  if (addresses !== undefined) header.addresses = addresses;
  return header;
}

function decodeTlvs(body: Buffer): ProxyTlv[] {
  const tlvs: ProxyTlv[] = [];
  let at = 0;
  while (at < body.length) {
    if (body.length - at < 3) throw new ProxyProtocolError('truncated TLV header');
    const type = body[at]!;
    const valueLength = body.readUInt16BE(at + 1);
    if (at + 3 + valueLength > body.length)
      throw new ProxyProtocolError(`TLV 0x${type.toString(16)} overruns the header`);
    tlvs.push({ type, value: Buffer.from(body.subarray(at + 3, at + 3 + valueLength)) });
    at += 3 + valueLength;
  }
  return tlvs;
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ProxyProtocolError(`bad port ${port}`);
}

/** The IPv4 address as a string, for plain IPv4 or IPv4-mapped IPv6 (`::ffff:1.2.3.4`); undefined otherwise. */
function asIPv4(address: string): string | undefined {
  if (isIP(address) === 4) return address;
  const lower = address.toLowerCase();
  if (lower.startsWith('::ffff:') && isIP(lower.slice(7)) === 4) return lower.slice(7);
  if (isIP(address) !== 6) throw new ProxyProtocolError(`not an IP address: ${JSON.stringify(address)}`);
  return undefined;
}

function writeIPv4(address: string, out: Buffer, offset: number): void {
  const parts = address.split('.');
  for (let i = 0; i < 4; i++) out[offset + i] = Number(parts[i]);
}

function readIPv4(buf: Buffer, offset: number): string {
  return `${buf[offset]}.${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}`;
}

/** Writes the 16 bytes of an IPv6 (or IPv4, mapped) address. */
export function writeIPv6(address: string, out: Buffer, offset: number): void {
  const zone = address.indexOf('%');
  let text = zone >= 0 ? address.slice(0, zone) : address;
  if (isIP(text) === 4) text = `::ffff:${text}`;
  if (isIP(text) !== 6) throw new ProxyProtocolError(`not an IP address: ${JSON.stringify(address)}`);
  // A trailing dotted quad (::ffff:1.2.3.4) becomes two hex groups.
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    const q = tail.split('.').map(Number);
    text = `${text.slice(0, lastColon + 1)}${((q[0]! << 8) | q[1]!).toString(16)}:${((q[2]! << 8) | q[3]!).toString(16)}`;
  }
  const halves = text.split('::');
  const head = halves[0] === '' ? [] : halves[0]!.split(':');
  const rest = halves.length > 1 && halves[1] !== '' ? halves[1]!.split(':') : [];
  const groups = halves.length > 1 ? [...head, ...Array(8 - head.length - rest.length).fill('0'), ...rest] : head;
  for (let i = 0; i < 8; i++) out.writeUInt16BE(Number.parseInt(groups[i]!, 16), offset + 2 * i);
}

/** RFC 5952 text for 16 address bytes; IPv4-mapped addresses as `::ffff:a.b.c.d`, the way Node reports them. */
export function readIPv6(buf: Buffer, offset: number): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(offset + 2 * i));
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${readIPv4(buf, offset + 12)}`;
  }
  // The longest run of two or more zero groups (the first of equal ones) becomes "::".
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
}

/**
 * For Node backends (and tests): reads the PROXY v2 header off the start of a socket and puts whatever followed it
 * back, so the application reads its own bytes as if the header had never been there. Rejects (and leaves the
 * socket to the caller to destroy) on a malformed header, an early end, or after timeoutMs.
 */
export function readProxyHeader(
  socket: Duplex,
  options: { maxLength?: number; timeoutMs?: number } = {},
): Promise<ProxyHeader> {
  const maxLength = options.maxLength ?? 4096;
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const finish = (err: Error | null, header?: ProxyHeader) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onEnd);
      if (err !== null) reject(err);
      else resolve(header!);
    };
    const onData = (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      let header: ProxyHeader | null;
      try {
        header = decodeProxyV2(buffered, maxLength);
      } catch (err) {
        socket.pause();
        finish(err as Error);
        return;
      }
      if (header === null) return;
      // Paused before the listener goes, or bytes arriving in between would be dropped.
      socket.pause();
      if (buffered.length > header.length) socket.unshift(buffered.subarray(header.length));
      finish(null, header);
    };
    const onEnd = () => finish(new ProxyProtocolError('connection ended before a complete PROXY header'));
    const timer = setTimeout(
      () => finish(new ProxyProtocolError('timed out waiting for the PROXY header')),
      options.timeoutMs ?? 5000,
    );
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onEnd);
  });
}
