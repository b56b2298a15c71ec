// Raft between managers over the mesh (daemon/mesh/raft-transport.ts), on two real libp2p hosts with real membership
// certificates and gates: messages arrive from the member the connection proved, and the receiver's `accepts` is
// asked for every frame, so a stream opened while a sender was still taken stops carrying its messages once it is
// not (a manager left out by --force-new-cluster that leads the old membership), and carries them again after.
import { generateKeyPair } from '@libp2p/crypto/keys';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MembershipGate } from '../../daemon/mesh/gate.ts';
import { createMeshHost, type MeshHost } from '../../daemon/mesh/host.ts';
import { CertificateVerifier, createClusterCa, issueCertificate } from '../../daemon/mesh/pki.ts';
import { MeshRaftTransport } from '../../daemon/mesh/raft-transport.ts';
import type { Message } from '../../raft/core/messages.ts';

const CLUSTER = 'c7kq2m4hx9p3w5n8r1t6y0v2z';
const ca = createClusterCa();

interface Member {
  nodeId: string;
  host: MeshHost;
  transport: MeshRaftTransport;
  received: Message[];
  logs: string[];
}

const members: Member[] = [];
let takesFromM2 = true;

async function startMember(nodeId: string, peers: () => Member[]): Promise<Member> {
  let gate: MembershipGate | undefined;
  const host = await createMeshHost({
    privateKey: await generateKeyPair('Ed25519'),
    listen: { host: '127.0.0.1', port: 0 },
    authorize: (peer, protocol) => gate!.authorize(peer, protocol),
  });
  const cert = issueCertificate(
    ca,
    { clusterId: CLUSTER, nodeId, peerId: host.peerId, role: 'manager' },
    { ttlMs: 3_600_000, now: Date.now() },
  );
  gate = new MembershipGate({
    host,
    verifier: new CertificateVerifier(ca.publicKey),
    clusterId: CLUSTER,
    ownCert: () => cert,
    isDenied: () => false,
  });
  await gate.start();
  const logs: string[] = [];
  const transport = new MeshRaftTransport({
    host,
    gate,
    peerOf: (id) => peers().find((m) => m.nodeId === id)?.host.peerId,
    accepts: (from) => from !== 'm2' || takesFromM2,
    log: (_level, message) => logs.push(message),
  });
  await transport.start();
  const received: Message[] = [];
  transport.listen((message) => received.push(message));
  return { nodeId, host, transport, received, logs };
}

const heartbeat = (term: number): Message => ({
  type: 'Heartbeat',
  from: 'm2',
  to: 'm1',
  term,
  commit: 0,
  readId: null,
  tick: term,
});

beforeAll(async () => {
  members.push(await startMember('m1', () => members), await startMember('m2', () => members));
  const [m1, m2] = members;
  await m2!.host.addPeerAddresses(m1!.host.peerId, m1!.host.multiaddrs());
});

afterAll(async () => {
  for (const member of members) {
    await member.transport.close();
    await member.host.stop();
  }
});

describe('raft transport', () => {
  it('asks the receiver for every frame: a sender no longer taken has its stream closed, and is taken again later', async () => {
    const [m1, m2] = members as [Member, Member];
    m2.transport.send('m1', [heartbeat(1)]);
    await expect.poll(() => m1.received.map((m) => m.term), { timeout: 10_000 }).toEqual([1]);

    // Same stream, next frame: m2 is not taken any more.
    takesFromM2 = false;
    m2.transport.send('m1', [heartbeat(2)]);
    await expect.poll(() => m1.logs.join('\n'), { timeout: 10_000 }).toMatch(/closing stream from m2: not a manager/);
    // Raft resends what is lost: whatever m2 sends now finds its stream gone, or a new one closed at its first frame.
    for (let term = 3; term <= 5; term++) {
      m2.transport.send('m1', [heartbeat(term)]);
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    expect(m1.received.map((m) => m.term)).toEqual([1]);

    // Taken again (made a manager anew): a new stream carries its messages.
    takesFromM2 = true;
    await expect
      .poll(
        () => {
          m2.transport.send('m1', [heartbeat(6)]);
          return m1.received.map((m) => m.term).includes(6);
        },
        { timeout: 10_000, interval: 300 },
      )
      .toBe(true);
  }, 30_000);
});
