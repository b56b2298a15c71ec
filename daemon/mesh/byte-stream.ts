// A libp2p v3 stream as a Node.js Duplex of raw bytes, for the load balancer's mesh hop (a client connection's bytes
// carried unchanged). The other protocols frame messages (framed-stream.ts); this one does not.
//
// Backpressure both ways: writes wait for the stream's 'drain' when send() says its buffer is full; incoming data is
// pushed into the Duplex, and when the Duplex's buffer is full the libp2p stream is paused (yamux then stops granting
// window to the sender) until Node asks for more (_read). A v3 stream with no 'message' listener resets itself once
// its read buffer fills, so the listener is attached at once, before any await.

import { Duplex } from 'node:stream';
import type { Stream } from '@libp2p/interface';

/**
 * While paused, the remote may still send what is left of its flow-control window (up to the yamux window, 4 MiB in
 * this mesh, see host.ts); the stream's read buffer must hold that much, or it would reset a paused stream.
 */
const PAUSED_READ_BUFFER_BYTES = 16 * 1024 * 1024 + 64 * 1024;

export function byteStream(stream: Stream): Duplex {
  stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, PAUSED_READ_BUFFER_BYTES);
  let wantPause = false;
  /** Inside stream.resume(), which dispatches buffered bytes before it grants window again: pause after it. */
  let resuming = false;
  const pauseIfReadable = () => {
    if (stream.readStatus === 'readable') stream.pause();
  };

  const duplex = new Duplex({
    allowHalfOpen: true,
    read() {
      if (!wantPause && stream.readStatus !== 'paused') return;
      wantPause = false;
      if (stream.readStatus !== 'paused') return;
      resuming = true;
      try {
        stream.resume();
      } finally {
        resuming = false;
      }
      if (wantPause) pauseIfReadable();
    },
    write(chunk: Buffer, _encoding, callback) {
      try {
        if (stream.send(chunk)) callback();
        else stream.onDrain().then(() => callback(), callback);
      } catch (err) {
        callback(err as Error);
      }
    },
    // Chunks written while corked (node:http2 corks around each batch of frames it writes) leave as one message:
    // one yamux frame, one Noise message and one socket write instead of one per chunk.
    writev(chunks: Array<{ chunk: Buffer }>, callback) {
      try {
        const data = chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk));
        if (stream.send(data)) callback();
        else stream.onDrain().then(() => callback(), callback);
      } catch (err) {
        callback(err as Error);
      }
    },
    final(callback) {
      // Half-close: the remote reads the end of the stream and may still answer.
      stream.close().then(
        () => callback(),
        (err: Error) => callback(err),
      );
    },
    destroy(err, callback) {
      if (stream.status === 'open' || stream.status === 'closing') stream.abort(err ?? new Error('stream destroyed'));
      callback(err);
    },
  });

  stream.addEventListener('message', (evt) => {
    const data = evt.data;
    const chunks = data instanceof Uint8Array ? [data] : data;
    let full = false;
    for (const chunk of chunks) {
      if (!duplex.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))) full = true;
    }
    if (full) {
      wantPause = true;
      if (!resuming) pauseIfReadable();
    }
  });
  // 'end': nothing more will be delivered. It also fires on a reset, just before 'close' carries the error.
  stream.addEventListener('end', () => {
    if (stream.status === 'reset' || stream.status === 'aborted') return;
    duplex.push(null);
  });
  stream.addEventListener('close', (evt) => {
    if (evt.error !== undefined) duplex.destroy(evt.error);
    else if (stream.status === 'reset' || stream.status === 'aborted')
      duplex.destroy(new Error(`stream ${stream.status}`));
    else if (stream.readBufferLength === 0) duplex.push(null);
  });
  if (stream.status !== 'open') duplex.destroy(new Error(`stream ${stream.status}`));
  else if (stream.readableEnded) duplex.push(null);
  return duplex;
}
