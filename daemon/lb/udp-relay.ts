// UDP over the mesh hop: a byte stream carries one flow's datagrams, each as a u16 big-endian length and the payload
// (a UDP payload is at most 65,507 bytes, so the length always fits). The stream keeps their order; it does not add
// delivery the client did not have: a datagram that would wait behind more than MAX_BUFFERED_BYTES is dropped,
// as a full socket buffer would drop it.
//
// The task's node connects a UDP socket to the task (connectUdpTask) and relays between it and the stream
// (relayFlow); the ingress's side is in udp-ingress.ts.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { parseAddress } from './endpoints.ts';

/** Datagrams waiting to be written to a stream (bytes) beyond which more are dropped. */
export const MAX_BUFFERED_BYTES = 1024 * 1024;

/** The frame of one datagram on a stream. */
export function frameDatagram(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(2 + payload.length);
  frame.writeUInt16BE(payload.length, 0);
  frame.set(payload, 2);
  return frame;
}

/**
 * Splits a stream's chunks back into datagrams. A frame cut across chunks waits for the rest (at most 64 KiB);
 * its parts are joined once, when complete, so a stream cut into tiny chunks costs no more than a whole one.
 */
export class DatagramReader {
  private parts: Buffer[] = [];
  private partsBytes = 0;
  /** Bytes the parts must reach before a frame can be read: 2 for the length, then the whole frame. */
  private needed = 0;
  private readonly onDatagram: (datagram: Buffer) => void;

  constructor(onDatagram: (datagram: Buffer) => void) {
    this.onDatagram = onDatagram;
  }

  push(chunk: Buffer): void {
    let buffer = chunk;
    if (this.parts.length > 0) {
      this.parts.push(chunk);
      this.partsBytes += chunk.length;
      if (this.partsBytes < this.needed) return;
      buffer = Buffer.concat(this.parts, this.partsBytes);
      this.parts = [];
      this.partsBytes = 0;
    }
    let offset = 0;
    while (buffer.length - offset >= 2) {
      const length = buffer.readUInt16BE(offset);
      if (buffer.length - offset - 2 < length) break;
      this.onDatagram(buffer.subarray(offset + 2, offset + 2 + length));
      offset += 2 + length;
    }
    if (offset === buffer.length) return;
    const rest = buffer.subarray(offset);
    this.parts = [rest];
    this.partsBytes = rest.length;
    this.needed = rest.length >= 2 ? 2 + rest.readUInt16BE(0) : 2;
  }
}

/** Writes a datagram's frame unless the stream already holds MAX_BUFFERED_BYTES; false when it was dropped. */
export function writeDatagram(stream: Duplex, payload: Uint8Array): boolean {
  if (stream.writableLength > MAX_BUFFERED_BYTES || stream.destroyed) return false;
  stream.write(frameDatagram(payload));
  return true;
}

/** Closes a UDP socket that may be closed already. */
export function closeQuietly(socket: UdpSocket): void {
  try {
    socket.close();
  } catch {
    // ERR_SOCKET_DGRAM_NOT_RUNNING: closed already
  }
}

/**
 * A UDP socket connected to the task's address (host:port), so that only the task's answers arrive on it and a
 * closed port comes back as ECONNREFUSED. Calls back once, with the socket or the error (the socket then closed).
 */
export function connectUdpTask(address: string, callback: (err: Error | undefined, socket?: UdpSocket) => void): void {
  let target: { host: string; port: number };
  try {
    target = parseAddress(address);
  } catch (err) {
    callback(err as Error);
    return;
  }
  const socket = createSocket(isIP(target.host) === 6 ? 'udp6' : 'udp4');
  let done = false;
  const onError = (err: Error) => {
    if (done) return;
    done = true;
    closeQuietly(socket);
    callback(err);
  };
  socket.once('error', onError);
  socket.connect(target.port, target.host, () => {
    if (done) return;
    done = true;
    socket.off('error', onError);
    callback(undefined, socket);
  });
}

/**
 * Relays one flow between a stream (framed datagrams) and a UDP socket connected to the task, until the stream
 * ends or fails, or the socket fails (the task's port is closed: ECONNREFUSED). Then both are closed and `done` is
 * called once. `early` holds stream bytes read before the relay began; the stream may be paused.
 */
export function relayFlow(stream: Duplex, socket: UdpSocket, early: Buffer | undefined, done: () => void): void {
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    closeQuietly(socket);
    stream.destroy();
    done();
  };
  // A datagram the kernel refuses (too large for the path) is lost, as it would be for the client itself.
  const reader = new DatagramReader((datagram) => socket.send(datagram, () => {}));
  socket.on('message', (message) => writeDatagram(stream, message));
  socket.on('error', finish);
  socket.on('close', finish);
  stream.on('data', (chunk: Buffer) => reader.push(chunk));
  stream.on('error', finish);
  stream.once('end', finish);
  stream.once('close', finish);
  if (early !== undefined) reader.push(early);
  stream.resume();
}
