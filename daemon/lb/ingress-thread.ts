// One ingress thread (see ingress-threads.ts): an IngressSet on the node's published ports, sharing them with the
// other threads (SO_REUSEPORT), doing what the main thread asks, and reaching other nodes through its own tunnels,
// whose transports the main thread relays (thread-relay.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { IngressSet } from './ingress-set.ts';
import type { FromIngressThread, IngressThreadData, ToIngressThread } from './ingress-threads.ts';
import { relayedTunnels } from './thread-relay.ts';
import { TunnelDialer } from './tunnel.ts';

const data = workerData as IngressThreadData;
const main = parentPort!;
const post = (message: FromIngressThread) => main.postMessage(message);
const tunnels = new TunnelDialer(relayedTunnels(data.relayPath), (message) =>
  post({ type: 'log', level: 'warn', message }),
);

const set = new IngressSet({
  nodeId: data.nodeId,
  ...(data.host === undefined ? {} : { host: data.host }),
  dialPeer: (peerId, header, signal) => tunnels.dial(peerId, header, signal),
  reusePort: true,
  roundRobinSlots: new Int32Array(data.roundRobinSlots),
  // The threads listen on the same ports: one of them says so.
  announcePorts: data.index === 0,
  onListeningChange: () => post({ type: 'listening', ports: set.listening() }),
  log: (level, message) => post({ type: 'log', level, message }),
});

main.on('message', (message: ToIngressThread) => {
  switch (message.type) {
    case 'table':
      set.update(message.table);
      return;
    case 'drain':
      void set.drain(message.taskId, message.graceMs).then(() => post({ type: 'done', id: message.id }));
      return;
    case 'stats':
      post({ type: 'done', id: message.id, stats: set.stats() });
      return;
    case 'close':
      void set.close().then(() => {
        tunnels.close();
        post({ type: 'done', id: message.id });
      });
      return;
  }
});
