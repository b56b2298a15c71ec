// A node's published ports as the endpoint table changes: listening follows the table, and a drained task is
// forgotten once the table stops naming it (so a long-lived node does not collect the IDs of every stopped task).
// One port number may be published twice, for TCP and for UDP, by different services.
import { createSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { IngressSet } from '../../daemon/lb/ingress-set.ts';
import type { TableService } from '../../daemon/lb/table.ts';
import { freePort, readAll } from '../helpers/loopback-tcp.ts';

const servers: Server[] = [];
const sets: IngressSet[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) server.close();
  await Promise.all(sets.splice(0).map((set) => set.close()));
});

async function backend(answer: string): Promise<number> {
  const server = createServer((socket) => socket.end(answer));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as { port: number }).port;
}

const table = (published: number, taskId: string, address: string, draining: string[] = []): TableService[] => [
  {
    serviceId: 'svc',
    serviceName: 'web',
    algorithm: 'round-robin',
    ports: [{ published, protocol: 'tcp', mode: 'ingress', proxyProtocol: false }],
    endpoints: [{ taskId, nodeId: 'n1', peerId: 'p1', address }],
    draining,
  },
];

describe('ingress set', () => {
  it('listens while the table publishes the port, and forgets a drained task once the table does', async () => {
    const published = await freePort();
    const address = `127.0.0.1:${await backend('from-a')}`;
    const set = new IngressSet({
      nodeId: 'n1',
      host: '127.0.0.1',
      dialPeer: () => Promise.reject(new Error('no mesh')),
      log: () => {},
    });
    sets.push(set);
    set.update(table(published, 'a', address));
    await expect.poll(() => set.listening()).toEqual([`${published}/tcp`]);
    expect(await readAll(published)).toBe('from-a');

    await set.drain('a', 0);
    expect(await readAll(published)).toBe(''); // drained: no new connection for it
    set.update([{ ...table(published, 'b', address)[0]!, endpoints: [] }]); // the table no longer names "a"
    // Should "a" ever be listed again, it is served: the ingress kept no memory of the old drain.
    set.update(table(published, 'a', address));
    expect(await readAll(published)).toBe('from-a');

    set.update([]);
    await expect.poll(() => set.listening()).toEqual([]);
  });

  it('serves the same number over TCP and UDP for two services, and stops each as the table drops it', async () => {
    const published = await freePort();
    const tcpAddress = `127.0.0.1:${await backend('over-tcp')}`;
    const udpTask = createSocket('udp4');
    udpTask.on('message', (message, from) => udpTask.send(`over-udp ${message}`, from.port, from.address));
    await new Promise<void>((resolve) => udpTask.bind(0, '127.0.0.1', () => resolve()));
    const set = new IngressSet({
      nodeId: 'n1',
      host: '127.0.0.1',
      dialPeer: () => Promise.reject(new Error('no mesh')),
      log: () => {},
    });
    sets.push(set);
    const udpService: TableService = {
      ...table(published, 'u', `127.0.0.1:${udpTask.address().port}`)[0]!,
      serviceId: 'dns',
      serviceName: 'dns',
      ports: [{ published, protocol: 'udp', mode: 'ingress', proxyProtocol: false }],
    };
    set.update([...table(published, 't', tcpAddress), udpService]);
    await expect.poll(() => set.listening().sort()).toEqual([`${published}/tcp`, `${published}/udp`]);
    expect(await readAll(published)).toBe('over-tcp');
    const client = createSocket('udp4');
    const answer = new Promise<string>((resolve) => client.once('message', (m) => resolve(m.toString())));
    client.send('ping', published, '127.0.0.1');
    expect(await answer).toBe('over-udp ping');
    expect(
      set
        .stats()
        .map((s) => s.serviceName)
        .sort(),
    ).toEqual(['dns', 'web']);

    set.update(table(published, 't', tcpAddress));
    await expect.poll(() => set.listening()).toEqual([`${published}/tcp`]);
    client.close();
    udpTask.close();
  });
});
