// Length-prefixed frames on a byte stream: a 4-byte big-endian length, then that many bytes.

export class FrameTooLargeError extends Error {
  constructor(length: number, max: number) {
    super(`frame of ${length} bytes exceeds the limit of ${max}`);
    this.name = 'FrameTooLargeError';
  }
}

export function encodeFrame(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(4 + payload.byteLength);
  frame.writeUInt32BE(payload.byteLength, 0);
  frame.set(payload, 4);
  return frame;
}

/** Splits a byte stream into frames, however the stream was chunked. */
export class FrameDecoder {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private readonly maxFrameBytes: number;

  constructor(maxFrameBytes: number) {
    this.maxFrameBytes = maxFrameBytes;
  }

  /** Returns the frames completed by this chunk. Throws FrameTooLargeError on an oversized length. */
  push(chunk: Buffer): Buffer[] {
    this.buffered.push(chunk);
    this.bufferedBytes += chunk.byteLength;
    const frames: Buffer[] = [];
    while (this.bufferedBytes >= 4) {
      const head = this.contiguous(4);
      const length = head.readUInt32BE(0);
      if (length > this.maxFrameBytes) throw new FrameTooLargeError(length, this.maxFrameBytes);
      // Wait until the whole frame is here before copying anything: a large frame arriving in many chunks
      // is joined once, not once per chunk.
      if (this.bufferedBytes < 4 + length) break;
      const data = this.contiguous(4 + length);
      frames.push(data.subarray(4, 4 + length));
      const rest = data.subarray(4 + length);
      if (rest.byteLength > 0) this.buffered[0] = rest;
      else this.buffered.shift();
      this.bufferedBytes -= 4 + length;
    }
    return frames;
  }

  /** The buffered bytes as one Buffer whose first `atLeast` bytes are contiguous. */
  private contiguous(atLeast: number): Buffer {
    if (this.buffered[0]!.byteLength < atLeast) this.buffered = [Buffer.concat(this.buffered, this.bufferedBytes)];
    return this.buffered[0]!;
  }
}
