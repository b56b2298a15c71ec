// Data path tickets over the mesh (PROTOCOLS.lbTicket): the asking side sends one empty frame, the node answers
// with one ticket from its DataPathServer (or { off: true } when it runs none). The protocol is protected: the mesh
// serves it only to members that showed their certificate on this connection, so tickets go to members only.
import type { MembershipGate } from '../mesh/gate.ts';
import type { MeshHost } from '../mesh/host.ts';
import { PROTOCOLS } from '../mesh/protocols.ts';
import { type DataPathServer, type FetchTicket, parseTicketReply, type TicketReply } from './data-path.ts';

/** A ticket frame is ~100 bytes; this leaves room without inviting large ones. */
const TICKET_FRAME_MAX_BYTES = 1024;
const REQUEST_TIMEOUT_MS = 5000;

/** Answers ticket requests with tickets of `server`, or says the data path is off when there is none. */
export async function serveDataPathTickets(host: MeshHost, server: DataPathServer | undefined): Promise<void> {
  await host.handle(
    PROTOCOLS.lbTicket,
    async (stream, remotePeer) => {
      await stream.read(AbortSignal.timeout(REQUEST_TIMEOUT_MS));
      const reply: TicketReply = server === undefined ? { off: true } : server.issue(remotePeer);
      await stream.send(reply);
    },
    { maxFrameBytes: TICKET_FRAME_MAX_BYTES },
  );
}

/**
 * Asks a peer for a ticket over the mesh. The host to dial is the peer's address on the mesh connection: where the
 * mesh reached it, its data path's port is likeliest to be reachable too. Through a relay there is none.
 */
export function meshTicketFetcher(host: MeshHost, gate: MembershipGate): FetchTicket {
  return async (peerId, signal) => {
    // The far end serves members only: it must have seen our certificate (once per connection).
    await gate.ensureHello(peerId);
    const { stream, remoteIp } = await host.openStream(peerId, PROTOCOLS.lbTicket, {
      signal,
      maxFrameBytes: TICKET_FRAME_MAX_BYTES,
    });
    let reply: ReturnType<typeof parseTicketReply>;
    try {
      await stream.send({}, signal);
      reply = parseTicketReply(await stream.read(signal));
    } catch (err) {
      stream.abort(err as Error);
      throw err;
    }
    // A graceful end (not a reset, which the serving side would log as a failure); the tunnel need not wait for it.
    void stream.close().catch(() => {});
    if ('off' in reply || remoteIp === undefined) return undefined;
    return { host: remoteIp, ...reply };
  };
}
