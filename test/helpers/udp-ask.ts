// One UDP request and its answer, from a socket of its own: a new flow through a UDP ingress each time.
import { createSocket } from 'node:dgram';

/** Sends `payload` to host:port and resolves with the first answer; rejects after timeoutMs without one. */
export function askUdp(host: string, port: number, payload: string, timeoutMs: number): Promise<string> {
  const socket = createSocket('udp4');
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no UDP answer from ${host}:${port} in ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.once('message', (message) => {
      clearTimeout(timer);
      resolve(message.toString());
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.send(payload, port, host);
  }).finally(() => socket.close());
}
