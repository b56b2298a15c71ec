// PROXY protocol v2: encoding for TCP4, TCP6 and LOCAL, round trips, and strict rejection of malformed headers.
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  decodeProxyV2,
  encodeProxyV2,
  PROXY_V2_SIGNATURE,
  ProxyProtocolError,
  readIPv6,
  readProxyHeader,
  writeIPv6,
} from '../../daemon/lb/proxy-protocol.ts';

const v4 = { sourceAddress: '192.0.2.10', sourcePort: 51234, destinationAddress: '10.0.0.1', destinationPort: 8080 };
const v6 = { sourceAddress: '2001:db8::1', sourcePort: 40000, destinationAddress: 'fd00::a:b', destinationPort: 443 };

describe('encodeProxyV2', () => {
  it('encodes TCP over IPv4 byte for byte', () => {
    const h = encodeProxyV2(v4);
    expect(h.length).toBe(28);
    expect(h.subarray(0, 12).equals(PROXY_V2_SIGNATURE)).toBe(true);
    expect(h[12]).toBe(0x21); // version 2, PROXY
    expect(h[13]).toBe(0x11); // TCP over IPv4
    expect(h.readUInt16BE(14)).toBe(12);
    expect([...h.subarray(16, 24)]).toEqual([192, 0, 2, 10, 10, 0, 0, 1]);
    expect(h.readUInt16BE(24)).toBe(51234);
    expect(h.readUInt16BE(26)).toBe(8080);
  });

  it('encodes TCP over IPv6', () => {
    const h = encodeProxyV2(v6);
    expect(h.length).toBe(52);
    expect(h[13]).toBe(0x21);
    expect(h.readUInt16BE(14)).toBe(36);
    expect(h.subarray(16, 32).toString('hex')).toBe('20010db8000000000000000000000001');
  });

  it('uses TCP4 for IPv4-mapped addresses, as a dual-stack socket reports them', () => {
    const h = encodeProxyV2({ ...v4, sourceAddress: '::ffff:192.0.2.10', destinationAddress: '::FFFF:10.0.0.1' });
    expect(h[13]).toBe(0x11);
    expect(decodeProxyV2(h)!.addresses).toEqual(v4);
  });

  it('maps IPv4 into IPv6 when the other address is IPv6', () => {
    const h = encodeProxyV2({ ...v6, sourceAddress: '192.0.2.10' });
    expect(h[13]).toBe(0x21);
    expect(decodeProxyV2(h)!.addresses!.sourceAddress).toBe('::ffff:192.0.2.10');
  });

  it('encodes LOCAL', () => {
    const h = encodeProxyV2(null);
    expect(h.length).toBe(16);
    expect(h[12]).toBe(0x20);
    expect(h[13]).toBe(0x00);
    expect(decodeProxyV2(h)).toEqual({ command: 'local', family: 'unspec', tlvs: [], length: 16 });
  });

  it('refuses bad addresses and ports', () => {
    expect(() => encodeProxyV2({ ...v4, sourceAddress: 'example.com' })).toThrow(ProxyProtocolError);
    expect(() => encodeProxyV2({ ...v4, sourcePort: 70000 })).toThrow(ProxyProtocolError);
    expect(() => encodeProxyV2({ ...v4, destinationPort: 1.5 })).toThrow(ProxyProtocolError);
  });
});

describe('decodeProxyV2', () => {
  it('round-trips IPv4 and IPv6, reporting the header length', () => {
    for (const addresses of [v4, v6]) {
      const h = encodeProxyV2(addresses);
      const decoded = decodeProxyV2(Buffer.concat([h, Buffer.from('GET / HTTP/1.1\r\n')]))!;
      expect(decoded.command).toBe('proxy');
      expect(decoded.addresses).toEqual(addresses);
      expect(decoded.length).toBe(h.length);
      expect(decoded.tlvs).toEqual([]);
    }
  });

  it('returns null for every proper prefix of a header', () => {
    const h = encodeProxyV2(v6);
    for (let n = 0; n < h.length; n++) expect(decodeProxyV2(h.subarray(0, n))).toBeNull();
  });

  it('reads TLVs after the addresses', () => {
    const h = encodeProxyV2(v4);
    const tlv = Buffer.from([0x04, 0x00, 0x03, 0x61, 0x62, 0x63, 0x05, 0x00, 0x00]);
    const withTlv = Buffer.concat([h, tlv]);
    withTlv.writeUInt16BE(12 + tlv.length, 14);
    const decoded = decodeProxyV2(withTlv)!;
    expect(decoded.tlvs).toEqual([
      { type: 4, value: Buffer.from('abc') },
      { type: 5, value: Buffer.alloc(0) },
    ]);
    expect(decoded.length).toBe(withTlv.length);
  });

  const malformed: Array<[string, (h: Buffer) => Buffer]> = [
    ['a bad signature', (h) => Buffer.concat([Buffer.from('X'), h.subarray(1)])],
    ['a v1 text header', () => Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n')],
    ['version 1 in the binary form', (h) => patch(h, 12, 0x11)],
    ['an unknown command', (h) => patch(h, 12, 0x22)],
    ['UDP', (h) => patch(h, 13, 0x12)],
    ['a unix socket family', (h) => patch(h, 13, 0x31)],
    ['an unknown family', (h) => patch(h, 13, 0x41)],
    ['PROXY with UNSPEC', (h) => patch(h, 13, 0x00)],
    ['a length shorter than the addresses', (h) => patchLength(h, 11)],
    ['a truncated TLV', (h) => Buffer.concat([patchLength(h, 14), Buffer.from([0x04, 0x00])])],
    ['a TLV longer than the header', (h) => Buffer.concat([patchLength(h, 15), Buffer.from([0x04, 0x00, 0x09])])],
  ];
  for (const [what, make] of malformed) {
    it(`rejects ${what}`, () => {
      expect(() => decodeProxyV2(make(encodeProxyV2(v4)))).toThrow(ProxyProtocolError);
    });
  }

  it('rejects a header longer than the limit before it has all arrived', () => {
    const h = patchLength(encodeProxyV2(v4), 5000);
    expect(() => decodeProxyV2(h.subarray(0, 16), 1024)).toThrow(/exceeds the limit/);
  });

  it('rejects garbage early, from the first wrong byte', () => {
    expect(() => decodeProxyV2(Buffer.from([0x0d, 0x0a, 0x0d, 0x0b]))).toThrow(ProxyProtocolError);
  });

  it('survives random bytes: either null, a header, or ProxyProtocolError', () => {
    let seed = 7;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    for (let i = 0; i < 2000; i++) {
      const h = encodeProxyV2(i % 2 ? v4 : v6);
      const at = rnd() % h.length;
      h[at] = rnd() & 0xff;
      try {
        decodeProxyV2(h);
      } catch (err) {
        expect(err).toBeInstanceOf(ProxyProtocolError);
      }
    }
  });
});

describe('IPv6 text and bytes', () => {
  const cases = [
    '::',
    '::1',
    '2001:db8::1',
    'fe80::1:2:3:4',
    '2001:db8:0:0:1:0:0:1',
    '1:2:3:4:5:6:7:8',
    '::ffff:1.2.3.4',
  ];
  it('round-trips to RFC 5952 text', () => {
    const out = Buffer.alloc(16);
    const expected = [
      '::',
      '::1',
      '2001:db8::1',
      'fe80::1:2:3:4',
      '2001:db8::1:0:0:1',
      '1:2:3:4:5:6:7:8',
      '::ffff:1.2.3.4',
    ];
    cases.forEach((text, i) => {
      writeIPv6(text, out, 0);
      expect(readIPv6(out, 0)).toBe(expected[i]);
    });
  });

  it('drops a zone index', () => {
    const out = Buffer.alloc(16);
    writeIPv6('fe80::1%eth0', out, 0);
    expect(readIPv6(out, 0)).toBe('fe80::1');
  });
});

describe('readProxyHeader', () => {
  it('reads the header from a stream in pieces and gives back the bytes after it', async () => {
    const stream = new PassThrough();
    const header = encodeProxyV2(v4);
    const reading = readProxyHeader(stream);
    stream.write(header.subarray(0, 5));
    stream.write(Buffer.concat([header.subarray(5), Buffer.from('hello')]));
    expect((await reading).addresses).toEqual(v4);
    expect(stream.read()?.toString()).toBe('hello');
  });

  it('rejects a malformed header and an early end', async () => {
    const bad = new PassThrough();
    const reading = readProxyHeader(bad);
    bad.write('GET / HTTP/1.1\r\n');
    await expect(reading).rejects.toThrow(ProxyProtocolError);
    const short = new PassThrough();
    const cut = readProxyHeader(short);
    short.end(encodeProxyV2(v4).subarray(0, 20));
    await expect(cut).rejects.toThrow(/ended before/);
  });
});

function patch(h: Buffer, at: number, value: number): Buffer {
  const copy = Buffer.from(h);
  copy[at] = value;
  return copy;
}

function patchLength(h: Buffer, length: number): Buffer {
  const copy = Buffer.from(h);
  copy.writeUInt16BE(length, 14);
  return copy;
}
