// Many forwarded connections over one data path connection between two nodes: a mux. A native hop (relay.c) is a
// TCP connection and a TLS handshake per forwarded connection, so each request crosses three TCP connections, and
// each new connection pays an ECDHE exchange at both ends. Over a mux, the connections to one peer share one TLS
// connection per relay thread: opening one is a frame, and the frames that a batch of events produces go out in one
// TLS write, so between the nodes a busy mux makes one segment and one wake-up for several requests.
//
// Set-up: as a native hop (MAGIC_MUX instead of MAGIC, the same TLS 1.3 handshake with the ticket's key), then
// frames both ways. A server that predates muxes refuses MAGIC_MUX, and the dialer falls back to native hops.
//
// Frames: an 8-byte header (stream id u32, type u8, zero u8, payload length u16; big-endian) and the payload:
//   OPEN    dialer -> server  the remote header (remote.ts, with its length prefix): a new stream, ids increasing
//   STATUS  server -> dialer  one status byte (remote.ts): ok, or a refusal, after which the server forgets it
//   DATA    either way        up to 16 KiB of the stream's bytes
//   FIN     either way        the sender's side ended (half-close, passed on as shutdown(SHUT_WR))
//   RESET   either way        the stream is gone (an error, a cut); no frame answers it
//   CREDIT  either way        u32: the receiver wrote that many more bytes out, so the sender may send them again
//
// Flow control: a stream may have WINDOW_BYTES sent and not yet credited. A receiver whose side a does not keep up
// (a slow client or task) keeps what it cannot write in that stream's buffer, never more than the window, so the
// mux goes on reading for every other stream: no stream blocks another. A peer that sends past the window breaks
// the protocol, and the mux ends, as for any malformed frame: its streams fail, the daemon goes on. When the mux's
// own send buffer is full (the TCP connection between the nodes is the bottleneck), streams stop reading their
// sockets until it drains (OUT_HIGH_BYTES).
//
// Threads: a mux and all its streams live on one relay thread, so like every conn they need no lock. A stream is a
// conn (KIND_STREAM) with side a its socket (the client, or the task) and no side b: the mux carries that. JS sees
// it like a native hop: set-up reported (the STATUS, or the peer's OPEN), then join or drop. The mux's memory is
// counted (refs): its carrier and every stream that points at it, as a stream JS queued may outlive the carrier.
#include "relay.h"

#define FRAME_HEADER_BYTES 8
#define DATA_MAX_BYTES (16 * 1024)
/** Per stream and direction: what may be in flight or waiting to be written out (HTTP/2's default is 64 KiB). */
#define WINDOW_BYTES (256 * 1024)
/** A receiver grants credit once this much has been written out, not per write: a CREDIT per 64 KiB. */
#define CREDIT_AFTER_BYTES (WINDOW_BYTES / 4)
/** Streams read no more from their sockets while this much waits to go out on the mux. */
#define OUT_HIGH_BYTES (256 * 1024)
/** What one read of the mux may bring: at least one whole frame. */
#define IN_BYTES (32 * 1024)
/** Stream table buckets (ids are sequential, so id % BUCKETS spreads them evenly). */
#define BUCKETS 1024
/**
 * Open streams per mux, at most: past it a peer's OPEN is answered with RESET, and a dialer's fails. With
 * MUX_BUFFERED_MAX_BYTES it bounds what a peer can make this process hold (about 1.5 KiB per parked stream).
 */
#define MAX_STREAMS 16384
/**
 * What a mux's streams may hold together for sides a that do not read (each within its window): past it the mux
 * reads no more frames until they drain. Only a peer whose streams' readers all stall gets there; the others
 * on that mux then wait too, which is the price of bounding memory.
 */
#define MUX_BUFFERED_MAX_BYTES (32 * 1024 * 1024)

enum { FRAME_DATA, FRAME_OPEN, FRAME_STATUS, FRAME_FIN, FRAME_RESET, FRAME_CREDIT };

struct mux {
  /** The TLS connection (KIND_MUX); NULL once it finished. */
  conn *carrier;
  relay_thread *thread;
  /** The carrier until JS has its end, plus one per stream that points here. Freed at 0. */
  _Atomic int refs;
  int closed;
  int is_server;
  conn *buckets[BUCKETS];
  uint32_t streams;
  /** Dialer: the last id given. Server: the highest id the peer opened. */
  uint32_t last_id;
  /** Frames not yet written, from out_start to out_end. */
  char *out;
  size_t out_start, out_end, out_capacity;
  /** Streams waiting for out to drain below OUT_HIGH_BYTES. */
  conn *blocked;
  /** Bytes its streams hold for their sides a (b_to_a.pending), all together. */
  size_t buffered;
  /** In thread->flush. */
  int listed;
  mux *flush_next;
  /** Read and not yet parsed: at most a frame's start. */
  size_t in_length;
  unsigned char in[IN_BYTES];
};

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_header(char *at, uint32_t id, int type, size_t length) {
  unsigned char *p = (unsigned char *)at;
  p[0] = (unsigned char)(id >> 24);
  p[1] = (unsigned char)(id >> 16);
  p[2] = (unsigned char)(id >> 8);
  p[3] = (unsigned char)id;
  p[4] = (unsigned char)type;
  p[5] = 0;
  p[6] = (unsigned char)(length >> 8);
  p[7] = (unsigned char)length;
}

// ---------------------------------------------------------------------------------------------------------------
// Sending

static void want_flush(mux *m) {
  if (m->listed) return;
  m->listed = 1;
  m->flush_next = m->thread->flush;
  m->thread->flush = m;
}

static size_t out_waiting(mux *m) {
  return m->out_end - m->out_start;
}

/** Room for `length` more bytes at out_end; NULL when there is no memory. */
static char *out_reserve(mux *m, size_t length) {
  if (m->out_start == m->out_end) m->out_start = m->out_end = 0;
  if (m->out_end + length <= m->out_capacity) return m->out + m->out_end;
  // Moved to the front (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets a write that waits resume from a new address).
  if (m->out_start > 0) {
    memmove(m->out, m->out + m->out_start, out_waiting(m));
    m->out_end -= m->out_start;
    m->out_start = 0;
    if (m->out_end + length <= m->out_capacity) return m->out + m->out_end;
  }
  size_t capacity = m->out_capacity ? m->out_capacity : 4 * DATA_MAX_BYTES;
  while (capacity < m->out_end + length) capacity *= 2;
  char *grown = realloc(m->out, capacity);
  if (grown == NULL) return NULL;
  m->out = grown;
  m->out_capacity = capacity;
  return m->out + m->out_end;
}

/** Queues a frame; ENOMEM when it cannot. */
static int out_frame(mux *m, uint32_t id, int type, const void *payload, size_t length) {
  char *at = out_reserve(m, FRAME_HEADER_BYTES + length);
  if (at == NULL) return ENOMEM;
  put_header(at, id, type, length);
  if (length > 0) memcpy(at + FRAME_HEADER_BYTES, payload, length);
  m->out_end += FRAME_HEADER_BYTES + length;
  want_flush(m);
  return 0;
}

/** Writes what the carrier takes. Returns 0 (all written, or waiting for room) or the errno that ends the mux. */
static int mux_flush(mux *m) {
  conn *carrier = m->carrier;
  // Streams may queue frames before the handshake is done (JS waits for it, but need not): they go out after it.
  if (carrier->phase != PHASE_MUX) return 0;
  while (m->out_start < m->out_end) {
    ssize_t sent = side_write(&carrier->b, m->out + m->out_start, out_waiting(m));
    if (sent < 0) return errno == EAGAIN || errno == EINTR ? 0 : errno;
    m->out_start += (size_t)sent;
    atomic_fetch_add_explicit(&carrier->a_to_b.bytes, (uint64_t)sent, memory_order_relaxed);
  }
  return 0;
}

/** The streams that waited for room get their turn after this batch. */
static void unblock(mux *m) {
  if (out_waiting(m) >= OUT_HIGH_BYTES) return;
  while (m->blocked) {
    conn *s = m->blocked;
    m->blocked = s->stream.blocked_next;
    s->stream.blocked = 0;
    mark_again(s);
  }
}

void mux_flush_all(relay_thread *t) {
  while (t->flush) {
    mux *m = t->flush;
    t->flush = m->flush_next;
    m->listed = 0;
    if (m->closed) continue;
    int error = mux_flush(m);
    if (error != 0) finish(m->carrier, error);
    else unblock(m);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Streams

static conn *find(mux *m, uint32_t id) {
  for (conn *s = m->buckets[id % BUCKETS]; s != NULL; s = s->stream.bucket_next)
    if (s->stream.id == id) return s;
  return NULL;
}

static void insert(mux *m, conn *s) {
  conn **bucket = &m->buckets[s->stream.id % BUCKETS];
  s->stream.bucket_next = *bucket;
  *bucket = s;
  m->streams++;
}

/** Takes a stream out of its mux: no frame reaches it from now on, and it no longer holds the mux. */
static void detach(conn *s) {
  mux *m = s->mux;
  if (m == NULL) return;
  if (s->stream.id != 0) {
    for (conn **at = &m->buckets[s->stream.id % BUCKETS]; *at != NULL; at = &(*at)->stream.bucket_next) {
      if (*at == s) {
        *at = s->stream.bucket_next;
        m->streams--;
        break;
      }
    }
  }
  if (s->stream.blocked) {
    for (conn **at = &m->blocked; *at != NULL; at = &(*at)->stream.blocked_next) {
      if (*at == s) {
        *at = s->stream.blocked_next;
        break;
      }
    }
    s->stream.blocked = 0;
  }
  s->mux = NULL;
  mux_unref(m);
}

/** Tells the peer the stream is gone, once. */
static void reset(conn *s) {
  mux *m = s->mux;
  if (m == NULL || m->closed || s->stream.gone || s->stream.id == 0) return;
  s->stream.gone = 1;
  // Without memory for the frame the peer keeps its side until the mux ends: nothing worse.
  out_frame(m, s->stream.id, FRAME_RESET, NULL, 0);
}

/** Bytes a stream held for side a were written or dropped: the mux reads again once below its bound. */
static void unbuffer(conn *s, size_t length) {
  mux *m = s->mux;
  if (m == NULL) return;
  int was_full = m->buffered >= MUX_BUFFERED_MAX_BYTES;
  m->buffered -= length;
  if (was_full && m->buffered < MUX_BUFFERED_MAX_BYTES && !m->closed) mark_again(m->carrier);
}

void stream_gone(conn *s, int error) {
  if (error != 0 || !(s->a_to_b.done && s->b_to_a.done)) reset(s);
  // finish() frees what it held.
  if (s->b_to_a.pending != NULL) unbuffer(s, s->b_to_a.end - s->b_to_a.start);
  detach(s);
}

/** Bytes written to side a: counted, and credited back to the peer in CREDIT_AFTER_BYTES steps. */
static void written_out(conn *s, size_t bytes) {
  atomic_fetch_add_explicit(&s->b_to_a.bytes, (uint64_t)bytes, memory_order_relaxed);
  s->stream.consumed += bytes;
  mux *m = s->mux;
  if (s->stream.consumed < CREDIT_AFTER_BYTES || m == NULL || m->closed || s->stream.gone) return;
  unsigned char grant[4] = {(unsigned char)(s->stream.consumed >> 24), (unsigned char)(s->stream.consumed >> 16),
                            (unsigned char)(s->stream.consumed >> 8), (unsigned char)s->stream.consumed};
  if (out_frame(m, s->stream.id, FRAME_CREDIT, grant, sizeof grant) == 0) s->stream.consumed = 0;
}

/** Keeps bytes side a did not take; EPROTO when that would pass the window (the peer ignored it). */
static int keep_for_later(conn *s, const unsigned char *bytes, size_t length) {
  direction *d = &s->b_to_a;
  size_t waiting = d->pending ? d->end - d->start : 0;
  if (waiting + length > WINDOW_BYTES) return EPROTO;
  if (d->pending == NULL) {
    d->start = d->end = 0;
  } else if (d->end + length > d->capacity && d->start > 0) {
    memmove(d->pending, d->pending + d->start, waiting);
    d->start = 0;
    d->end = waiting;
  }
  if (d->end + length > d->capacity) {
    size_t capacity = d->capacity ? d->capacity : DATA_MAX_BYTES;
    while (capacity < d->end + length) capacity *= 2;
    char *grown = realloc(d->pending, capacity);
    // The window bounds it, so no memory means the process is in trouble: this stream fails, the mux goes on.
    if (grown == NULL) return ENOMEM;
    d->pending = grown;
    d->capacity = capacity;
  }
  memcpy(d->pending + d->end, bytes, length);
  d->end += length;
  if (s->mux != NULL) s->mux->buffered += length;
  return 0;
}

/** A DATA frame: written to side a at once where it can be, else kept. Returns EPROTO to end the mux. */
static int deliver(conn *s, const unsigned char *bytes, size_t length) {
  if (s->b_to_a.source_ended) return EPROTO;
  // A dialer sends only once answered, and a server answers when it joins: before that, nothing is owed room.
  if (s->is_server && s->phase != PHASE_RELAY) return EPROTO;
  size_t sent = 0;
  if (s->phase == PHASE_RELAY && s->b_to_a.pending == NULL) {
    ssize_t n = send(s->a.fd, bytes, length, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      finish(s, errno);
      return 0;
    }
    if (n > 0) {
      sent = (size_t)n;
      written_out(s, sent);
    }
  }
  if (sent == length) return 0;
  int error = keep_for_later(s, bytes + sent, length - sent);
  if (error == ENOMEM) finish(s, ENOMEM);
  return error == EPROTO ? EPROTO : 0;
}

/** Writes what waits for side a, then passes the peer's FIN on. Returns 0 or the errno that ends the stream. */
static int write_out(conn *s) {
  direction *d = &s->b_to_a;
  while (d->pending != NULL) {
    ssize_t n = send(s->a.fd, d->pending + d->start, d->end - d->start, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : errno;
    d->start += (size_t)n;
    written_out(s, (size_t)n);
    unbuffer(s, (size_t)n);
    if (d->start < d->end) continue;
    // An idle stream holds no buffer.
    free(d->pending);
    d->pending = NULL;
    d->start = d->end = d->capacity = 0;
  }
  if (d->source_ended && !d->done) {
    shutdown(s->a.fd, SHUT_WR);
    d->done = 1;
  }
  return 0;
}

/**
 * Reads side a into DATA frames, straight into the mux's send buffer, within the stream's credit. Returns 0, the
 * errno that ends the stream, or MORE_TO_DO.
 */
static int read_in(conn *s) {
  direction *d = &s->a_to_b;
  mux *m = s->mux;
  for (int reads = 0;; reads++) {
    if (d->source_ended) {
      if (!d->done) {
        if (out_frame(m, s->stream.id, FRAME_FIN, NULL, 0) != 0) return ENOMEM;
        d->done = 1;
      }
      return 0;
    }
    // No credit: the peer's CREDIT runs it again.
    if (!s->a.readable || s->stream.credit <= 0) return 0;
    if (out_waiting(m) >= OUT_HIGH_BYTES) {
      if (!s->stream.blocked) {
        s->stream.blocked = 1;
        s->stream.blocked_next = m->blocked;
        m->blocked = s;
      }
      return 0;
    }
    if (reads == READS_PER_TURN) return MORE_TO_DO;
    size_t want = s->stream.credit < DATA_MAX_BYTES ? (size_t)s->stream.credit : DATA_MAX_BYTES;
    char *at = out_reserve(m, FRAME_HEADER_BYTES + want);
    if (at == NULL) return ENOMEM;
    ssize_t got = recv(s->a.fd, at + FRAME_HEADER_BYTES, want, MSG_DONTWAIT);
    if (got < 0) {
      if (errno == EAGAIN) s->a.readable = 0;
      return errno == EAGAIN || errno == EINTR ? 0 : errno;
    }
    if (got == 0) {
      d->source_ended = 1;
      continue;
    }
    if ((size_t)got < want && !s->a.ending) s->a.readable = 0;
    put_header(at, s->stream.id, FRAME_DATA, (size_t)got);
    m->out_end += FRAME_HEADER_BYTES + (size_t)got;
    s->stream.credit -= got;
    atomic_fetch_add_explicit(&d->bytes, (uint64_t)got, memory_order_relaxed);
    want_flush(m);
  }
}

void stream_run(conn *s) {
  // Not joined yet: what the peer sends waits in b_to_a (within the window) until it is.
  if (s->phase != PHASE_RELAY) return;
  if (s->mux == NULL) {
    finish(s, ECONNRESET);
    return;
  }
  uint64_t moved_before = atomic_load_explicit(&s->a_to_b.bytes, memory_order_relaxed) +
                          atomic_load_explicit(&s->b_to_a.bytes, memory_order_relaxed);
  int error = write_out(s);
  int more = 0;
  if (error == 0 && s->mux != NULL) {
    error = read_in(s);
    if (error == MORE_TO_DO) more = 1, error = 0;
  }
  if (s->finished) return;
  if (error != 0 || (s->a_to_b.done && s->b_to_a.done)) {
    finish(s, error);
    return;
  }
  if (more) mark_again(s);
  keep_lingering(s, moved_before);
}

/** OP_STREAM_OPEN: a dialer's stream gets its id and its OPEN goes out; then it waits for the STATUS. */
void stream_open(conn *s) {
  mux *m = s->mux;
  int failure = 0;
  if (atomic_load(&s->cut_requested)) failure = ECANCELED;
  // A used-up id space fails the stream, and JS retires the mux (a new one starts from 1).
  else if (m->closed || m->streams >= MAX_STREAMS || m->last_id == UINT32_MAX) failure = ECONNRESET;
  if (failure == 0) {
    s->stream.id = ++m->last_id;
    insert(m, s);
    s->phase = PHASE_STREAM_WAIT;
    failure = out_frame(m, s->stream.id, FRAME_OPEN, s->setup, s->setup_length);
  }
  if (failure == 0) return;
  detach(s);
  park(s, -failure);
}

/**
 * OP_CUT: a relaying stream ends now (RESET to the peer, as a cut pair shuts down both its sockets); a dialer's
 * stream still waiting for its STATUS fails. A parked one JS drops itself.
 */
void stream_cut(conn *s) {
  if (s->finished) return;
  if (s->phase == PHASE_RELAY) {
    finish(s, 0);
  } else if (s->phase == PHASE_STREAM_WAIT) {
    reset(s);
    detach(s);
    park(s, -ECANCELED);
  }
}

int stream_join(conn *s) {
  free(s->setup);
  s->setup = NULL;
  s->a.readable = 1;
  s->phase = PHASE_RELAY;
  mux *m = s->mux;
  // The mux ended, or the peer reset the stream while it was parked.
  if (m == NULL || m->closed || s->stream.gone) {
    errno = ECONNRESET;
    return -1;
  }
  if (s->join_status >= 0) {
    unsigned char status = (unsigned char)s->join_status;
    if (out_frame(m, s->stream.id, FRAME_STATUS, &status, 1) != 0) {
      errno = ENOMEM;
      return -1;
    }
  }
  return 0;
}

void stream_drop(conn *s) {
  mux *m = s->mux;
  if (m != NULL && !m->closed && !s->stream.gone && s->stream.id != 0) {
    // Server: the refusal's status, after which both sides forget it. Dialer (or no status): a RESET.
    if (s->join_status >= 0) {
      unsigned char status = (unsigned char)s->join_status;
      if (out_frame(m, s->stream.id, FRAME_STATUS, &status, 1) == 0) s->stream.gone = 1;
    } else {
      reset(s);
    }
  }
  finish(s, 0);
}

/** A peer's OPEN: a new stream, parked and reported to JS (serveStreams), which joins it to the task or refuses. */
static int open_from_peer(mux *m, uint32_t id, const unsigned char *header, size_t length) {
  if (!m->is_server || id <= m->last_id) return EPROTO;
  if (length < 3 || 2 + (((size_t)header[0] << 8) | header[1]) != length) return EPROTO;
  m->last_id = id;
  conn *s = m->streams < MAX_STREAMS ? calloc(1, sizeof *s) : NULL;
  if (s != NULL) s->setup = malloc(length);
  if (s == NULL || s->setup == NULL) {
    free(s);
    return out_frame(m, id, FRAME_RESET, NULL, 0);
  }
  conn *carrier = m->carrier;
  memcpy(s->setup, header, length);
  s->setup_length = length;
  s->kind = KIND_STREAM;
  s->is_server = 1;
  s->thread = m->thread;
  s->env = carrier->env;
  s->a.fd = s->b.fd = -1;
  s->a.owner = s->b.owner = s;
  s->join_status = -1;
  s->owner = carrier->owner;
  memcpy(s->identity, carrier->identity, IDENTITY_CHARS + 1);
  s->mux = m;
  atomic_fetch_add(&m->refs, 1);
  s->stream.id = id;
  s->stream.credit = WINDOW_BYTES;
  insert(m, s);
  env_enter(s);
  park(s, 0);
  return 0;
}

/** One frame from the peer. Returns 0, or the errno that ends the mux (EPROTO: the peer broke the protocol). */
static int on_frame(mux *m, uint32_t id, int type, const unsigned char *payload, size_t length) {
  if (id == 0) return EPROTO;
  if (type == FRAME_OPEN) return open_from_peer(m, id, payload, length);
  // Only a server answers with a STATUS, whatever the stream.
  if (type == FRAME_STATUS && m->is_server) return EPROTO;
  conn *s = find(m, id);
  // Gone here already, or told gone: a frame that crossed our RESET (or its refusal) on the way.
  if (s == NULL || s->stream.gone) return 0;
  switch (type) {
    case FRAME_DATA:
      return deliver(s, payload, length);
    case FRAME_STATUS:
      if (s->phase != PHASE_STREAM_WAIT) return EPROTO;
      // A refusal: the server has forgotten it.
      if (payload[0] != 0) s->stream.gone = 1;
      park(s, payload[0]);
      return 0;
    case FRAME_FIN:
      if (s->b_to_a.source_ended || (s->is_server && s->phase != PHASE_RELAY)) return EPROTO;
      s->b_to_a.source_ended = 1;
      stream_run(s);
      return 0;
    case FRAME_RESET:
      s->stream.gone = 1;
      if (s->phase == PHASE_STREAM_WAIT) {
        detach(s);
        park(s, -ECONNRESET);
      } else if (s->phase == PHASE_RELAY) {
        finish(s, ECONNRESET);
      }
      // Parked: JS joins it (which then fails) or drops it.
      return 0;
    case FRAME_CREDIT: {
      s->stream.credit += get_u32(payload);
      if (s->stream.credit > (int64_t)WINDOW_BYTES) return EPROTO;
      stream_run(s);
      return 0;
    }
    default:
      return EPROTO;
  }
}

/** The largest payload a frame type may carry, or -1 for a type that does not exist. */
static long payload_max(int type) {
  switch (type) {
    case FRAME_DATA:
      return DATA_MAX_BYTES;
    case FRAME_OPEN:
      return HEADER_MAX_BYTES;
    case FRAME_STATUS:
      return 1;
    case FRAME_FIN:
    case FRAME_RESET:
      return 0;
    case FRAME_CREDIT:
      return 4;
    default:
      return -1;
  }
}

/** Runs every whole frame in m->in; keeps a partial one for the next read. */
static int parse(mux *m) {
  size_t at = 0;
  int error = 0;
  while (error == 0 && m->in_length - at >= FRAME_HEADER_BYTES) {
    const unsigned char *h = m->in + at;
    int type = h[4];
    size_t length = ((size_t)h[6] << 8) | h[7];
    long max = payload_max(type);
    // STATUS and CREDIT have exactly their size; the rest up to theirs.
    int exact = type == FRAME_STATUS || type == FRAME_CREDIT;
    if (h[5] != 0 || max < 0 || length > (size_t)max || (exact && length != (size_t)max)) return EPROTO;
    if (m->in_length - at < FRAME_HEADER_BYTES + length) break;
    error = on_frame(m, get_u32(h), type, h + FRAME_HEADER_BYTES, length);
    at += FRAME_HEADER_BYTES + length;
    // A frame may have ended the mux (a stream's failure does not).
    if (m->closed) return 0;
  }
  memmove(m->in, m->in + at, m->in_length - at);
  m->in_length -= at;
  return error;
}

// ---------------------------------------------------------------------------------------------------------------
// The mux

mux *mux_new(conn *carrier) {
  mux *m = calloc(1, sizeof *m);
  if (m == NULL) return NULL;
  m->carrier = carrier;
  m->thread = carrier->thread;
  m->is_server = carrier->is_server;
  atomic_init(&m->refs, 1);
  return m;
}

void mux_unref(mux *m) {
  if (atomic_fetch_sub(&m->refs, 1) != 1) return;
  free(m->out);
  free(m);
}

/**
 * TCP keepalive on the carrier: a peer that vanishes (powered off, cut off) takes every stream to it along, so it
 * must be found in seconds, not after TCP's 15 minutes of retransmission.
 */
static void watch_peer(int fd) {
  int on = 1, idle_s = 15, interval_s = 5, probes = 3;
  unsigned int user_timeout_ms = 30000;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

void mux_start(conn *carrier) {
  carrier->phase = PHASE_MUX;
  OPENSSL_cleanse(carrier->key, sizeof carrier->key);
  free(carrier->setup);
  carrier->setup = NULL;
  watch_peer(carrier->b.fd);
  report_mux_up(carrier);
  // Frames may have come with the handshake's last flight, already read into OpenSSL's buffer.
  carrier->b.readable = 1;
  mux_run(carrier);
}

void mux_run(conn *carrier) {
  mux *m = carrier->mux;
  int error = mux_flush(m);
  int closed_by_peer = 0;
  for (int reads = 0; error == 0 && !closed_by_peer; reads++) {
    // Full: the streams that drain below the bound run it again (unbuffer).
    if (!carrier->b.readable || m->buffered >= MUX_BUFFERED_MAX_BYTES) break;
    if (reads == READS_PER_TURN) {
      mark_again(carrier);
      break;
    }
    ssize_t got = side_read(&carrier->b, (char *)m->in + m->in_length, IN_BYTES - m->in_length);
    if (got < 0) {
      if (errno != EAGAIN && errno != EINTR) error = errno;
      break;
    }
    // The peer closed the mux (a daemon stopping): its streams are cut, as with a TCP connection's reset.
    if (got == 0) closed_by_peer = 1;
    else {
      atomic_fetch_add_explicit(&carrier->b_to_a.bytes, (uint64_t)got, memory_order_relaxed);
      m->in_length += (size_t)got;
      error = parse(m);
    }
    if (m->closed) return;
  }
  if (error != 0 || closed_by_peer) finish(carrier, error);
  else unblock(m);
}

void mux_gone(conn *carrier) {
  mux *m = carrier->mux;
  if (m == NULL || m->closed) return;
  m->closed = 1;
  m->carrier = NULL;
  // Out of the table first: finishing one must not touch the table being walked.
  conn *failed = NULL;
  for (int i = 0; i < BUCKETS; i++) {
    while (m->buckets[i] != NULL) {
      conn *s = m->buckets[i];
      m->buckets[i] = s->stream.bucket_next;
      s->stream.bucket_next = failed;
      failed = s;
    }
  }
  m->streams = 0;
  while (failed != NULL) {
    conn *s = failed;
    failed = s->stream.bucket_next;
    s->stream.id = 0;
    detach(s);
    if (s->phase == PHASE_STREAM_WAIT) park(s, -ECONNRESET);
    else if (s->phase == PHASE_RELAY && !s->finished) finish(s, ECONNRESET);
    // Parked: JS joins it (which then fails) or drops it.
  }
}

// ---------------------------------------------------------------------------------------------------------------
// JS side

/**
 * openStream(mux, header, onSetup, onDone): a stream on a mux this thread dialed, sending header (encodeRemoteHeader's
 * bytes); onSetup gets the STATUS byte or -errno, then it is joined or dropped like a native hop (join, drop, cut,
 * bytes).
 */
static napi_value js_open_stream(napi_env env, napi_callback_info info) {
  env_state *state = state_of(env);
  size_t argc = 4;
  napi_value argv[4];
  unsigned char header[HEADER_MAX_BYTES];
  if (state == NULL) return NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 || !is_function(env, argv[2]) ||
      !is_function(env, argv[3]))
    return throw_error(env, "openStream(mux, header, onSetup, onDone): bad arguments");
  conn *carrier = conn_of(env, argv[0]);
  if (carrier == NULL || carrier->kind != KIND_MUX || carrier->is_server || carrier->env != state)
    return throw_error(env, "openStream: not a mux this thread dialed");
  int64_t length = get_bytes(env, argv[1], header, sizeof header);
  if (length < 3 || 2 + (((int64_t)header[0] << 8) | header[1]) != length)
    return throw_error(env, "openStream: the header must be 3 to 1026 bytes, its length prefix first");
  conn *s = calloc(1, sizeof *s);
  if (s != NULL) s->setup = malloc((size_t)length);
  if (s == NULL || s->setup == NULL) {
    free(s);
    return throw_error(env, "openStream: out of memory");
  }
  memcpy(s->setup, header, (size_t)length);
  s->setup_length = (size_t)length;
  s->kind = KIND_STREAM;
  s->thread = carrier->thread;
  s->a.fd = s->b.fd = -1;
  s->a.owner = s->b.owner = s;
  s->join_status = -1;
  s->phase = PHASE_STREAM_OPEN;
  memcpy(s->identity, carrier->identity, IDENTITY_CHARS + 1);
  s->mux = carrier->mux;
  atomic_fetch_add(&s->mux->refs, 1);
  s->stream.credit = WINDOW_BYTES;
  napi_create_reference(env, argv[2], 1, &s->on_setup);
  napi_create_reference(env, argv[3], 1, &s->on_done);
  return adopt(env, state, s, OP_STREAM_OPEN);
}

/**
 * serveStreams(onStream): the streams peers open on muxes this thread accepted go to onStream(handle, header,
 * identity, owner), owner as given to accept(), which joins or drops the handle and returns the function for its
 * end, onDone(aToB, bToA, errno).
 */
static napi_value js_serve_streams(napi_env env, napi_callback_info info) {
  env_state *state = state_of(env);
  size_t argc = 1;
  napi_value argv[1];
  if (state == NULL) return NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || !is_function(env, argv[0]))
    return throw_error(env, "serveStreams(onStream) needs a function");
  if (state->on_stream != NULL) napi_delete_reference(env, state->on_stream);
  napi_create_reference(env, argv[0], 1, &state->on_stream);
  return NULL;
}

int stream_report(napi_env env, conn *s) {
  napi_value on_stream, receiver, argv[4], on_done;
  env_state *state = s->env;
  if (state->on_stream == NULL || napi_get_reference_value(env, state->on_stream, &on_stream) != napi_ok ||
      on_stream == NULL)
    return 0;
  napi_get_undefined(env, &receiver);
  napi_create_external(env, s, NULL, NULL, &argv[0]);
  napi_create_buffer_copy(env, s->setup_length - 2, s->setup + 2, NULL, &argv[1]);
  napi_create_string_utf8(env, s->identity, NAPI_AUTO_LENGTH, &argv[2]);
  napi_create_int64(env, s->owner, &argv[3]);
  // A function that threw has not taken it (or has, and then a drop finds it claimed): call_setup drops it.
  if (napi_call_function(env, receiver, on_stream, 4, argv, &on_done) != napi_ok) return 0;
  if (is_function(env, on_done)) napi_create_reference(env, on_done, 1, &s->on_done);
  return 1;
}

void mux_exports(napi_env env, napi_value exports) {
  export_function(env, exports, "openStream", js_open_stream);
  export_function(env, exports, "serveStreams", js_serve_streams);
}
