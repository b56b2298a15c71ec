// One ingress thread (see ingress-threads.ts): an IngressSet on the node's published ports, sharing them with the
// other threads (SO_REUSEPORT), doing what the main thread asks, and reaching other nodes through its own tunnels:
// over the data path, dialled from here with tickets the main thread fetches (data-path.ts), or else through the
// mesh, whose streams the main thread relays (thread-relay.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { type DataPathTicket, directFirst, type FetchTicket } from './data-path.ts';
import { IngressSet } from './ingress-set.ts';
import type { FromIngressThread, IngressThreadData, ToIngressThread } from './ingress-threads.ts';
import { nativeHopDialer } from './native-hop.ts';
import { nativeRelay } from './native-relay.ts';
import { relayedTunnels } from './thread-relay.ts';
import { TunnelDialer } from './tunnel.ts';

const data = workerData as IngressThreadData;
const main = parentPort!;
const post = (message: FromIngressThread) => main.postMessage(message);
const logWarn = (message: string) => post({ type: 'log', level: 'warn', message });

/** Ticket requests sent to the main thread, by id. */
const ticketRequests = new Map<number, (answer: Extract<ToIngressThread, { type: 'ticket' }>) => void>();
let nextTicketRequest = 1;
const fetchTicketFromMain: FetchTicket = (peerId, signal) =>
  new Promise<DataPathTicket | undefined>((resolve, reject) => {
    const id = nextTicketRequest++;
    const onAbort = () => {
      ticketRequests.delete(id);
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    ticketRequests.set(id, (answer) => {
      signal.removeEventListener('abort', onAbort);
      if (answer.error !== undefined) reject(new Error(answer.error));
      else resolve(answer.ticket);
    });
    post({ type: 'ticket', id, peerId });
  });

const paths = directFirst(data.dataPath ? fetchTicketFromMain : undefined, relayedTunnels(data.relayPath), logWarn);
const tunnels = new TunnelDialer(paths.open, logWarn);

// Native hops (native-hop.ts) where this thread relays natively and the data path is on, with the same tickets.
const relay = data.relay === 'native' && data.dataPath ? nativeRelay() : undefined;
const hops =
  typeof relay === 'object' && relay.dataPath ? nativeHopDialer(relay, fetchTicketFromMain, logWarn) : undefined;

const set = new IngressSet({
  nodeId: data.nodeId,
  ...(data.host === undefined ? {} : { host: data.host }),
  dialPeer: (peerId, header, signal) => tunnels.dial(peerId, header, signal),
  ...(hops === undefined ? {} : { dialNative: hops.dial }),
  reusePort: true,
  roundRobinSlots: new Int32Array(data.roundRobinSlots),
  // The threads listen on the same ports: one of them says so.
  announcePorts: data.index === 0,
  ...(data.relay === undefined ? {} : { relay: data.relay }),
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
      post({
        type: 'done',
        id: message.id,
        stats: set.stats(),
        tunnels: { ...paths.counts(), native: hops?.open() ?? 0, mux: hops?.muxes() ?? 0 },
      });
      return;
    case 'ticket': {
      const answer = ticketRequests.get(message.id);
      ticketRequests.delete(message.id);
      answer?.(message);
      return;
    }
    case 'close':
      void set.close().then(() => {
        tunnels.close();
        post({ type: 'done', id: message.id });
      });
      return;
  }
});
