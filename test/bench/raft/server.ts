// One member of the Raft benchmark cluster: a key-value store on RaftNode with FileStorage (real fsync)
// and the TCP transport, serving writes over HTTP/JSON like etcd's gateway does, so both systems are
// driven by the same load generator.
//
//   node test/bench/raft/server.ts --id n1 --dir DIR --raft-port P --http-port H --peers n1=127.0.0.1:P1,...
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { RaftNode, type StateMachine } from '../../../raft/driver/raft-node.ts';
import { TcpTransport } from '../../../raft/driver/tcp-transport.ts';
import { FileStorage } from '../../../raft/storage/file-storage.ts';

const { values } = parseArgs({
  options: {
    id: { type: 'string' },
    dir: { type: 'string' },
    'raft-port': { type: 'string' },
    'http-port': { type: 'string' },
    peers: { type: 'string' },
  },
});
const id = values.id!;
const peers = new Map(
  values.peers!.split(',').map((p) => {
    const [peerId, addr] = p.split('=') as [string, string];
    const [host, port] = addr.split(':') as [string, string];
    return [peerId, { host, port: Number(port) }];
  }),
);

class KvMachine implements StateMachine {
  data = new Map<string, Uint8Array>();
  apply(command: Uint8Array): unknown {
    // key length (1 byte), key, value
    const keyLength = command[0]!;
    const key = Buffer.from(command.subarray(1, 1 + keyLength)).toString();
    this.data.set(key, command.subarray(1 + keyLength));
    return this.data.size;
  }
  snapshot(): Uint8Array {
    const parts: Buffer[] = [];
    for (const [k, v] of this.data) {
      const head = Buffer.alloc(6);
      head.writeUInt16BE(Buffer.byteLength(k), 0);
      head.writeUInt32BE(v.byteLength, 2);
      parts.push(head, Buffer.from(k), Buffer.from(v));
    }
    return Buffer.concat(parts);
  }
  restore(data: Uint8Array): void {
    const buf = Buffer.from(data);
    this.data = new Map();
    for (let o = 0; o < buf.byteLength; ) {
      const kl = buf.readUInt16BE(o);
      const vl = buf.readUInt32BE(o + 2);
      const key = buf.subarray(o + 6, o + 6 + kl).toString();
      this.data.set(key, buf.subarray(o + 6 + kl, o + 6 + kl + vl));
      o += 6 + kl + vl;
    }
  }
}

const transport = new TcpTransport({ listen: { host: '127.0.0.1', port: Number(values['raft-port']) }, peers });
await transport.start();
const node = await RaftNode.start({
  id,
  storage: new FileStorage({ dir: values.dir! }),
  transport,
  stateMachine: new KvMachine(),
  bootstrap: { voters: [...peers.keys()], learners: [] },
  snapshotEvery: 100_000,
  requestTimeoutMs: 5_000,
});

const http = createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/status') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ ...node.status(), metrics: node.metrics }));
    return;
  }
  if (req.method !== 'POST' || req.url !== '/put') {
    res.statusCode = 404;
    res.end();
    return;
  }
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    let body: { key: string; value: string };
    try {
      body = JSON.parse(Buffer.concat(chunks).toString());
    } catch {
      res.statusCode = 400;
      res.end('{"error":"bad json"}');
      return;
    }
    const key = Buffer.from(body.key);
    const value = Buffer.from(body.value, 'base64');
    const command = Buffer.concat([Buffer.from([key.byteLength]), key, value]);
    node.propose(command).then(
      (size) => res.end(`{"ok":true,"size":${size}}`),
      (error: Error) => {
        res.statusCode = 503;
        res.end(JSON.stringify({ error: error.message }));
      },
    );
  });
});
http.keepAliveTimeout = 60_000;
await new Promise<void>((resolve) => http.listen(Number(values['http-port']), '127.0.0.1', resolve));
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void node.stop().then(() => process.exit(0));
});
