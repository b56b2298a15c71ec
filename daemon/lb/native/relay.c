// swarmd's native TCP relay: moves the bytes of forwarded connections between two connected sockets, off the
// JavaScript thread. The load balancer (forwarder.ts) still accepts each client, picks a task, connects to it,
// retries and writes the PROXY header in JavaScript; once both sockets are connected it hands their file
// descriptors here (native-relay.ts), and this file does what pump.ts would do, without a JS callback, a Buffer
// or a libuv round trip per chunk. On the lb bench that is the difference between about half of HAProxy's
// requests/s and HAProxy's own. Between nodes it also sets up the data path's TLS connections (below), and mux.c
// carries many forwarded connections over one of them; relay.h holds the types both share.
//
// Threads: a pool of relay threads, each with its own epoll set, shared by every JS thread of the process (the
// main thread and the ingress threads). A connection is given to one relay thread for its whole life, so its
// state is only ever touched by that thread, and needs no lock; JS only reads its byte counters (atomics) and may
// ask to cut it (shutdown(2) under its JS thread's lock, see below). JS queues a new connection to its relay thread
// and wakes it (an eventfd); the relay thread registers both sockets itself before it runs any event of theirs.
// Registering them from JS instead left a window between the two: the relay thread could run and even finish the
// connection on the first socket's events while JS registered, then cut, a second descriptor that was already
// closed and reused by another connection.
//
// Per direction: read up to 16 KiB (HAProxy's default buffer) into the relay thread's scratch buffer and write it
// straight out; only what the destination does not take is copied into a buffer of the direction's own, which
// stops reading from that source until it is flushed. So an idle connection holds no buffer (about 200 bytes in
// all), and a busy one at most 16 KiB per blocked direction. epoll is edge-triggered: each wakeup runs both
// directions until they block again, reading only a side that may hold bytes (side.readable: a short read or an
// EAGAIN shows it empty until its next event), so a request costs one read per side, not a read that fails too.
// An EOF from one side is passed on as shutdown(SHUT_WR) to the other once its bytes are flushed (half-close, as
// pump.ts). The connection ends when both directions have, or at the first error.
//
// Ownership: relay() dups the two descriptors, so JS closes its own sockets at once and the relay owns the
// connection. When it ends, the relay thread closes its descriptors and queues the result to the JS thread that
// started it (a thread-safe function per JS thread), which frees it. A JS thread going away (an ingress thread
// stopping) cuts its connections; their results are then freed without calling into JS, and its thread-safe
// function (which Node deletes with the thread's environment) is no longer touched.
//
// Linger: once one side has ended (its EOF passed on), the other side must keep taking what is sent to it: a
// connection that then waits on a side that does not read, with no byte moving for linger_ms, is cut (pump.ts's
// LINGER_MS, HAProxy's client-fin/server-fin). A half-open connection that merely waits for an answer is not.
//
// Linux only (epoll); native-relay.ts falls back to pump.ts where this is not built.
#include "relay.h"

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
relay_thread pool[MAX_THREADS];
_Atomic int pool_size;
static _Atomic unsigned next_thread;

int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void env_unref(env_state *env) {
  if (atomic_fetch_sub(&env->refs, 1) != 1) return;
  pthread_mutex_destroy(&env->lock);
  free(env);
}

// ---------------------------------------------------------------------------------------------------------------
// Relay threads

/**
 * After a failed SSL call: 0 when it has to wait for its socket, -1 for the peer's close_notify (its EOF), else the
 * errno that ends the connection. OpenSSL's error queue is per thread: cleared here so the next call starts clean.
 */
int ssl_failure(SSL *ssl, int result) {
  int saved = errno;
  int kind = SSL_get_error(ssl, result);
  ERR_clear_error();
  switch (kind) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      return 0;
    case SSL_ERROR_ZERO_RETURN:
      return -1;
    case SSL_ERROR_SYSCALL:
      // The socket failed, or (errno 0) it ended without a close_notify: a cut, not an EOF (it may be a truncation).
      return saved != 0 ? saved : ECONNRESET;
    default:
      return EPROTO;
  }
}

/**
 * Reads what there is: the byte count, 0 at EOF, or -1 with errno set (EAGAIN: nothing now). Keeps s->readable:
 * cleared once the read shows the socket has nothing more (see side), unless epoll reported an ending.
 */
ssize_t side_read(side *s, char *buffer, size_t length) {
  if (s->ssl == NULL) {
    ssize_t got = recv(s->fd, buffer, length, MSG_DONTWAIT);
    if ((got > 0 && (size_t)got < length && !s->ending) || (got < 0 && errno == EAGAIN)) s->readable = 0;
    return got;
  }
  size_t got;
  errno = 0;
  if (SSL_read_ex(s->ssl, buffer, length, &got)) {
    // OpenSSL may hold more records than it returned (read-ahead): only with none left is the socket the limit.
    if (s->drained && !s->ending && !SSL_has_pending(s->ssl)) s->readable = 0;
    return (ssize_t)got;
  }
  int failure = ssl_failure(s->ssl, 0);
  if (failure < 0) return 0;
  if (failure == 0) s->readable = 0;
  errno = failure == 0 ? EAGAIN : failure;
  return -1;
}

/** Writes what fits: the byte count, or -1 with errno set (EAGAIN: nothing fits now). */
ssize_t side_write(side *s, const char *bytes, size_t length) {
  if (s->ssl == NULL) return send(s->fd, bytes, length, MSG_NOSIGNAL | MSG_DONTWAIT);
  // Partial writes are on (SSL_MODE_ENABLE_PARTIAL_WRITE): it returns once a record or more is out. After a
  // would-block it must be called again with the same bytes, which is what the direction's pending buffer holds
  // (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER: from another address).
  size_t sent;
  errno = 0;
  if (SSL_write_ex(s->ssl, bytes, length, &sent)) return (ssize_t)sent;
  int failure = ssl_failure(s->ssl, 0);
  errno = failure == 0 ? EAGAIN : failure < 0 ? EPIPE : failure;
  return -1;
}

/**
 * Passes an EOF on to a side: shutdown(SHUT_WR), or a close_notify (TLS 1.3 closes one direction with it, so the
 * other goes on). Returns 0 once done, or EAGAIN when the close_notify did not fit yet.
 */
static int side_end(side *s) {
  if (s->ssl == NULL) {
    // ENOTCONN: the destination is already gone; its own direction reports that.
    shutdown(s->fd, SHUT_WR);
    return 0;
  }
  int result = SSL_shutdown(s->ssl);
  if (result >= 0) return 0;
  // A failure other than waiting: the other direction sees it on its next read or write.
  return ssl_failure(s->ssl, result) == 0 ? EAGAIN : 0;
}

/**
 * Moves what it can from source to destination, up to READS_PER_TURN reads. Returns 0 when it has to wait, the
 * errno that ends the connection, or MORE_TO_DO.
 */
static int run_direction(direction *d, side *source, side *destination, char *scratch) {
  for (int reads = 0;; reads++) {
    if (d->pending != NULL) {
      ssize_t n = side_write(destination, d->pending + d->start, d->end - d->start);
      if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : errno;
      d->start += (size_t)n;
      atomic_fetch_add_explicit(&d->bytes, (uint64_t)n, memory_order_relaxed);
      if (d->start < d->end) continue;
      free(d->pending);
      d->pending = NULL;
    }
    if (d->source_ended) {
      if (!d->done) {
        if (side_end(destination) == EAGAIN) return 0;
        d->done = 1;
      }
      return 0;
    }
    if (!source->readable) return 0;
    if (reads == READS_PER_TURN) return MORE_TO_DO;
    ssize_t got = side_read(source, scratch, BUFFER_BYTES);
    if (got < 0) return errno == EAGAIN || errno == EINTR ? 0 : errno;
    if (got == 0) {
      d->source_ended = 1;
      continue;
    }
    ssize_t sent = side_write(destination, scratch, (size_t)got);
    if (sent < 0) {
      if (errno != EAGAIN && errno != EINTR) return errno;
      sent = 0;
    }
    atomic_fetch_add_explicit(&d->bytes, (uint64_t)sent, memory_order_relaxed);
    if (sent == got) continue;
    // The destination is full: keep the rest, and read no more from this source until it is taken.
    d->pending = malloc((size_t)(got - sent));
    if (d->pending == NULL) return ENOMEM;
    memcpy(d->pending, scratch + sent, (size_t)(got - sent));
    d->start = 0;
    d->end = (size_t)(got - sent);
    return 0;
  }
}

static void linger_unlink(conn *c) {
  if (!c->lingering) return;
  if (c->linger_prev) c->linger_prev->linger_next = c->linger_next;
  else c->thread->lingering = c->linger_next;
  if (c->linger_next) c->linger_next->linger_prev = c->linger_prev;
  c->lingering = 0;
}

/** Whether one direction is done and the other holds bytes its destination does not take. */
static int waits_on_reader(conn *c) {
  direction *x = &c->a_to_b, *y = &c->b_to_a;
  return (x->done && y->pending != NULL) || (y->done && x->pending != NULL);
}

/** Bytes sent to both sides and not yet acknowledged by them (SIOCOUTQ). */
static int64_t queued_to_peers(conn *c) {
  int a = 0, b = 0;
  ioctl(c->a.fd, SIOCOUTQ, &a);
  ioctl(c->b.fd, SIOCOUTQ, &b);
  return (int64_t)a + b;
}

static uint64_t bytes_moved(conn *c) {
  return atomic_load_explicit(&c->a_to_b.bytes, memory_order_relaxed) +
         atomic_load_explicit(&c->b_to_a.bytes, memory_order_relaxed);
}

/**
 * Ends a connection on its relay thread: closes its descriptors and queues it for reporting once the current batch
 * of events is done (a later event of the same batch may still point at it).
 */
void finish(conn *c, int error) {
  c->finished = 1;
  c->error = error;
  linger_unlink(c);
  if (c->kind == KIND_STREAM) stream_gone(c, error);
  else if (c->kind == KIND_MUX) mux_gone(c);
  env_state *env = c->env;
  // Marked closed under the lock before the descriptors are closed: JS shutdown()s them only while open, so it can
  // never reach a descriptor number that has been closed and reused by something else.
  pthread_mutex_lock(&env->lock);
  c->open = 0;
  if (c->env_prev) c->env_prev->env_next = c->env_next;
  else env->conns = c->env_next;
  if (c->env_next) c->env_next->env_prev = c->env_prev;
  pthread_mutex_unlock(&env->lock);
  // A data path connection has no side a until it is joined.
  if (c->a.fd >= 0) {
    epoll_ctl(c->thread->epoll_fd, EPOLL_CTL_DEL, c->a.fd, NULL);
    close(c->a.fd);
  }
  // A stream has no side b of its own: its mux carries it.
  if (c->b.fd >= 0) {
    epoll_ctl(c->thread->epoll_fd, EPOLL_CTL_DEL, c->b.fd, NULL);
    close(c->b.fd);
  }
  // No close_notify here: SSL_free only frees. A clean end sent one already (side_end).
  SSL_free(c->b.ssl);
  c->b.ssl = NULL;
  free(c->setup);
  c->setup = NULL;
  free(c->a_to_b.pending);
  free(c->b_to_a.pending);
  c->a_to_b.pending = c->b_to_a.pending = NULL;
  c->report = REPORT_DONE;
  c->linger_next = c->thread->finished;
  c->thread->finished = c;
}

/** Frees a finished conn; a carrier's mux lives on while streams still point at it. */
static void conn_free(conn *c) {
  if (c->kind == KIND_MUX && c->mux != NULL) mux_unref(c->mux);
  free(c);
}

/** Hands each finished connection to its JS thread, which reports and frees it (call_done). */
static void report_finished(relay_thread *t) {
  while (t->finished) {
    conn *c = t->finished;
    t->finished = c->linger_next;
    env_state *env = c->env;
    // Under the lock, and only while the JS thread is there: once its cleanup hook has run, Node deletes the
    // thread-safe function with the environment.
    pthread_mutex_lock(&env->lock);
    int queued = !env->closing && napi_call_threadsafe_function(env->done_calls, c, napi_tsfn_nonblocking) == napi_ok;
    pthread_mutex_unlock(&env->lock);
    if (!queued) conn_free(c);
    env_unref(env);
  }
}

static void run_setup(conn *c);

static void run_conn(conn *c) {
  if (c->finished) return;
  if (c->kind == KIND_STREAM) {
    stream_run(c);
    return;
  }
  if (c->phase == PHASE_MUX) {
    mux_run(c);
    return;
  }
  if (c->phase != PHASE_RELAY) {
    run_setup(c);
    return;
  }
  uint64_t moved_before = bytes_moved(c);
  char *scratch = c->thread->scratch;
  int up = run_direction(&c->a_to_b, &c->a, &c->b, scratch);
  int down = up > 0 ? 0 : run_direction(&c->b_to_a, &c->b, &c->a, scratch);
  int error = up > 0 ? up : down > 0 ? down : 0;
  if (error != 0 || (c->a_to_b.done && c->b_to_a.done)) {
    finish(c, error);
    return;
  }
  if (up == MORE_TO_DO || down == MORE_TO_DO) mark_again(c);
  keep_lingering(c, moved_before);
}

/** Gives c another turn after this batch of events, without an event (epoll is edge-triggered: none would come). */
void mark_again(conn *c) {
  if (c->in_again) return;
  c->in_again = 1;
  c->again_next = c->thread->again;
  c->thread->again = c;
}

/**
 * After a turn: a connection that waits on a reader (one direction ended, the other holding bytes) is watched, with
 * a deadline that moves while the reader takes bytes; one that no longer waits is not.
 */
void keep_lingering(conn *c, uint64_t moved_before) {
  if (!waits_on_reader(c)) {
    linger_unlink(c);
    return;
  }
  if (c->lingering) {
    // Still waiting, but the reader took something: it is slow, not gone.
    if (bytes_moved(c) != moved_before) c->linger_deadline_ms = now_ms() + c->linger_ms;
    return;
  }
  c->lingering = 1;
  c->linger_deadline_ms = now_ms() + c->linger_ms;
  c->linger_queued = queued_to_peers(c);
  c->linger_prev = NULL;
  c->linger_next = c->thread->lingering;
  if (c->linger_next) c->linger_next->linger_prev = c;
  c->thread->lingering = c;
}

/**
 * Checks the connections that wait on a reader. A reader that took bytes since the last check gets more time: the
 * kernel wakes a writer only once a good part of its send buffer is free, so a slow reader may make progress that
 * no event reports; its shrinking send queue does, and running the connection sends what now fits.
 */
static void check_lingerers(relay_thread *t) {
  int64_t now = now_ms();
  conn *c = t->lingering;
  while (c) {
    // run_conn and finish unlink c only, so next stays in the list.
    conn *next = c->linger_next;
    int64_t queued = queued_to_peers(c);
    if (queued != c->linger_queued) {
      c->linger_queued = queued;
      c->linger_deadline_ms = now + c->linger_ms;
      run_conn(c);
    } else if (now >= c->linger_deadline_ms) {
      finish(c, ETIMEDOUT);
    }
    c = next;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The data path between two nodes (data-path.ts). A forwarded connection to a task on another node is one TCP
// connection to that node's data path port, which this file sets up and then relays like any other, with TLS on
// side b:
//
//   dialer -> server:  MAGIC (8 bytes, so the server tells it from a legacy tunnel, which starts with a TLS record),
//                      then a TLS 1.3 handshake, the ticket's key as external PSK (psk_dhe_ke: ECDHE as well, so a
//                      key that leaks later opens no recorded traffic), then the remote header (remote.ts)
//   server -> dialer:  one status byte (remote.ts), then the task's bytes
//
// JS decides everything but the bytes: the dialer's JS connects the socket and hands it here with the header; the
// server's JS accepts it and hands it here. Each side's set-up ends in a report to JS (the status byte, or the
// header), with the connection parked: its events are ignored until JS joins it to the other socket (the client,
// or the task JS connected to) or drops it, so what happens next is JS's choice, made without a race.

#define MAGIC_BYTES 8
static const char MAGIC[MAGIC_BYTES] = {'s', 'w', 'a', 'r', 'm', 'd', 'R', '1'};
/** A mux (mux.c): the same TLS set-up, then frames of many streams. A server that predates it refuses it (EPROTO). */
static const char MAGIC_MUX[MAGIC_BYTES] = {'s', 'w', 'a', 'r', 'm', 'd', 'M', '1'};
#define TLS_HANDSHAKE_RECORD 0x16
/** The PSK suites are SHA-256 ones. AES-GCM where the CPU has AES instructions, ChaCha20 otherwise (data-path.ts). */
#define CIPHER_SUITES "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
/** Data path keys this process accepts at once (data-path.ts's MAX_OUTSTANDING_TICKETS). */
#define PSK_SLOTS 1024

typedef struct {
  char identity[IDENTITY_CHARS + 1];
  unsigned char key[PSK_KEY_BYTES];
  int64_t expires_ms;
} psk_entry;

static pthread_mutex_t psk_lock = PTHREAD_MUTEX_INITIALIZER;
static psk_entry psk_table[PSK_SLOTS];
static SSL_CTX *dial_ctx, *serve_ctx;

/** Adds a key for handshakes until ttl_ms from now: in place of the same identity, an expired one, or the oldest. */
static void psk_add(const char *identity, const unsigned char *key, int64_t ttl_ms) {
  int64_t now = now_ms();
  pthread_mutex_lock(&psk_lock);
  psk_entry *slot = &psk_table[0];
  for (int i = 0; i < PSK_SLOTS; i++) {
    psk_entry *e = &psk_table[i];
    if (strcmp(e->identity, identity) == 0) {
      slot = e;
      break;
    }
    if (e->expires_ms < slot->expires_ms) slot = e;
  }
  memcpy(slot->identity, identity, IDENTITY_CHARS + 1);
  memcpy(slot->key, key, PSK_KEY_BYTES);
  slot->expires_ms = now + ttl_ms;
  pthread_mutex_unlock(&psk_lock);
}

/** Copies the key of an identity that has not expired into key; 0 when there is none. */
static int psk_find(const char *identity, unsigned char *key) {
  int64_t now = now_ms();
  int found = 0;
  pthread_mutex_lock(&psk_lock);
  for (int i = 0; i < PSK_SLOTS && !found; i++) {
    psk_entry *e = &psk_table[i];
    if (e->expires_ms > now && strcmp(e->identity, identity) == 0) {
      memcpy(key, e->key, PSK_KEY_BYTES);
      found = 1;
    }
  }
  pthread_mutex_unlock(&psk_lock);
  return found;
}

static unsigned int psk_dial(SSL *ssl, const char *hint, char *identity, unsigned int max_identity,
                             unsigned char *psk, unsigned int max_psk) {
  (void)hint;
  conn *c = SSL_get_app_data(ssl);
  if (c == NULL || max_identity < IDENTITY_CHARS + 1 || max_psk < PSK_KEY_BYTES) return 0;
  memcpy(identity, c->identity, IDENTITY_CHARS + 1);
  memcpy(psk, c->key, PSK_KEY_BYTES);
  return PSK_KEY_BYTES;
}

static unsigned int psk_serve(SSL *ssl, const char *identity, unsigned char *psk, unsigned int max_psk) {
  conn *c = SSL_get_app_data(ssl);
  if (c == NULL || identity == NULL || max_psk < PSK_KEY_BYTES || strlen(identity) != IDENTITY_CHARS) return 0;
  if (!psk_find(identity, psk)) return 0;
  memcpy(c->identity, identity, IDENTITY_CHARS + 1);
  return PSK_KEY_BYTES;
}

static SSL_CTX *new_tls_context(int server) {
  SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == NULL) return NULL;
  int ok = SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) && SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
           SSL_CTX_set_ciphersuites(ctx, CIPHER_SUITES);
  if (!ok) {
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return NULL;
  }
  // Partial writes with a moving buffer: side_write's contract. Not SSL_MODE_RELEASE_BUFFERS: a keep-alive
  // connection goes idle after every answer, and freeing and allocating its record buffers each time cost 13 us of
  // CPU per request on the lb bench's hop (63 against 50), more than the ~34 KiB they hold is worth. Read-ahead: a
  // record's header and body in one recv, not two.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_read_ahead(ctx, 1);
  // One handshake per connection, keyed by the ticket: no session to resume, so no tickets sent.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (server) {
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_psk_server_callback(ctx, psk_serve);
  } else {
    SSL_CTX_set_psk_client_callback(ctx, psk_dial);
  }
  return ctx;
}

/** Queues an operation on a connection to its relay thread, and wakes it. */
void queue_op(conn *c, int op) {
  relay_thread *t = c->thread;
  pthread_mutex_lock(&t->incoming_lock);
  c->ops |= (unsigned)op;
  if (!c->queued) {
    c->queued = 1;
    c->incoming_next = t->incoming;
    t->incoming = c;
  }
  pthread_mutex_unlock(&t->incoming_lock);
  uint64_t one = 1;
  // Cannot fail but on a counter overflow (2^64 wakes); the thread reads it down at each wake.
  (void)!write(t->wake_fd, &one, sizeof one);
}

/** Parks a connection whose set-up is over and reports the outcome to its JS thread, which joins or drops it. */
void park(conn *c, int result) {
  env_state *env = c->env;
  c->setup_result = result;
  c->report = REPORT_SETUP;
  OPENSSL_cleanse(c->key, sizeof c->key);
  // Under the lock: env_cleanup drops the parked connections nobody will join once its JS thread goes.
  pthread_mutex_lock(&env->lock);
  c->phase = PHASE_PARKED;
  int queued = !env->closing && napi_call_threadsafe_function(env->done_calls, c, napi_tsfn_nonblocking) == napi_ok;
  if (!queued) c->claimed = 1;
  pthread_mutex_unlock(&env->lock);
  if (!queued) finish(c, ECANCELED);
}

/** One set-up step after another until one has to wait. Returns 0 (waiting, or parked) or the errno that failed it. */
static int setup_steps(conn *c) {
  SSL *ssl = c->b.ssl;
  for (;;) {
    size_t moved;
    int ok;
    switch (c->phase) {
      case PHASE_CLASSIFY: {
        char first[MAGIC_BYTES];
        ssize_t got = recv(c->b.fd, first, MAGIC_BYTES, MSG_PEEK | MSG_DONTWAIT);
        if (got < 0) return errno == EAGAIN || errno == EINTR ? 0 : errno;
        if (got == 0) return ECONNRESET;
        if ((unsigned char)first[0] == TLS_HANDSHAKE_RECORD) {
          // Nothing consumed: JS's TLS server reads it all from its own socket.
          park(c, SETUP_LEGACY);
          return 0;
        }
        int is_mux = memcmp(first, MAGIC_MUX, (size_t)got) == 0;
        if (!is_mux && memcmp(first, MAGIC, (size_t)got) != 0) return EPROTO;
        // The rest of the magic comes with the next segment, which edge-triggered epoll reports as a new event.
        if (got < MAGIC_BYTES) return 0;
        if (recv(c->b.fd, first, MAGIC_BYTES, MSG_DONTWAIT) != MAGIC_BYTES) return EPROTO;
        if (is_mux && (c->mux = mux_new(c)) == NULL) return ENOMEM;
        if (is_mux) c->kind = KIND_MUX;
        c->phase = PHASE_HANDSHAKE;
        break;
      }
      case PHASE_SEND_MAGIC: {
        const char *magic = c->kind == KIND_MUX ? MAGIC_MUX : MAGIC;
        ssize_t sent = send(c->b.fd, magic + c->setup_done, MAGIC_BYTES - c->setup_done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) return errno == EAGAIN || errno == EINTR ? 0 : errno;
        c->setup_done += (size_t)sent;
        if (c->setup_done < MAGIC_BYTES) return 0;
        c->setup_done = 0;
        c->phase = PHASE_HANDSHAKE;
        break;
      }
      case PHASE_HANDSHAKE:
        ok = SSL_do_handshake(ssl);
        if (ok != 1) {
          int failure = ssl_failure(ssl, ok);
          return failure < 0 ? ECONNRESET : failure;
        }
        if (c->kind == KIND_MUX) {
          mux_start(c);
          return 0;
        }
        c->phase = c->is_server ? PHASE_READ_HEADER : PHASE_SEND_HEADER;
        break;
      case PHASE_SEND_HEADER:
        if (!SSL_write_ex(ssl, c->setup + c->setup_done, c->setup_length - c->setup_done, &moved)) {
          int failure = ssl_failure(ssl, 0);
          return failure < 0 ? ECONNRESET : failure;
        }
        c->setup_done += moved;
        if (c->setup_done == c->setup_length) c->phase = PHASE_READ_STATUS;
        break;
      case PHASE_READ_STATUS: {
        // One byte only: the task's first bytes may be right behind it, and stay in the session for the relay.
        unsigned char status;
        if (!SSL_read_ex(ssl, &status, 1, &moved)) {
          int failure = ssl_failure(ssl, 0);
          return failure < 0 ? ECONNRESET : failure;
        }
        park(c, status);
        return 0;
      }
      case PHASE_READ_HEADER: {
        size_t want = 2;
        if (c->setup_done >= 2) {
          size_t length = ((size_t)c->setup[0] << 8) | c->setup[1];
          if (length == 0 || 2 + length > HEADER_MAX_BYTES) return EMSGSIZE;
          want += length;
        }
        if (c->setup_done == want) {
          if (want > 2) {
            c->setup_length = want;
            park(c, 0);
            return 0;
          }
          break;
        }
        if (!SSL_read_ex(ssl, c->setup + c->setup_done, want - c->setup_done, &moved)) {
          int failure = ssl_failure(ssl, 0);
          return failure < 0 ? ECONNRESET : failure;
        }
        c->setup_done += moved;
        break;
      }
      default:
        return 0;
    }
  }
}

static void run_setup(conn *c) {
  if (c->phase == PHASE_PARKED) return;
  int error = setup_steps(c);
  if (error != 0) park(c, -error);
}

/** OP_DROP: the status byte if there is one and the session is up (a refusal), a close_notify, then the end. */
static void drop(conn *c) {
  if (c->kind == KIND_STREAM) {
    stream_drop(c);
    return;
  }
  SSL *ssl = c->b.ssl;
  if (ssl != NULL && SSL_is_init_finished(ssl)) {
    if (c->join_status >= 0) {
      unsigned char status = (unsigned char)c->join_status;
      size_t sent;
      if (!SSL_write_ex(ssl, &status, 1, &sent)) ERR_clear_error();
    }
    if (SSL_shutdown(ssl) < 0) ERR_clear_error();
  }
  finish(c, 0);
}

/** Gives the connections whose last turn ended with bytes left their next turn. */
static void run_again(relay_thread *t) {
  conn *c = t->again;
  t->again = NULL;
  while (c) {
    conn *next = c->again_next;
    c->in_again = 0;
    // A finished one is skipped; run_conn may put this one back for the turn after.
    run_conn(c);
    c = next;
  }
}

/**
 * OP_JOIN: a parked data path connection starts relaying with side a, its status byte (server) sent first. Returns
 * 0, or -1 with errno set.
 */
static int join(conn *c) {
  if (c->kind == KIND_STREAM) return stream_join(c);
  if (c->join_status >= 0) {
    c->a_to_b.pending = malloc(1);
    if (c->a_to_b.pending == NULL) {
      errno = ENOMEM;
      return -1;
    }
    c->a_to_b.pending[0] = (char)c->join_status;
    c->a_to_b.start = 0;
    c->a_to_b.end = 1;
  }
  free(c->setup);
  c->setup = NULL;
  // The set-up phases read without keeping `readable`: the relay starts by reading both sides until they prove
  // empty. `drained` needs no reset: bio_watch kept it through the set-up, and any bytes that came after its last
  // recv raised an event while the connection was parked, which cleared it (relay_thread_main).
  c->a.readable = c->b.readable = 1;
  c->phase = PHASE_RELAY;
  return 0;
}

/**
 * Takes what JS has queued: new relays and data path connections (registered, then run once: what arrived before
 * is waiting already), and the joins and drops of parked ones.
 */
static void start(conn *c, int setting_up);
static void start_joined(conn *c);

static void take_incoming(relay_thread *t) {
  uint64_t count;
  while (read(t->wake_fd, &count, sizeof count) > 0) {
  }
  pthread_mutex_lock(&t->incoming_lock);
  conn *c = t->incoming;
  t->incoming = NULL;
  pthread_mutex_unlock(&t->incoming_lock);
  while (c) {
    // A conn counts as queued until it is taken here: an op JS queues before that only adds its bit, so the list
    // stays as it was taken (a stream's cut can come while its OPEN waits). Ops queued after go to incoming again.
    pthread_mutex_lock(&t->incoming_lock);
    conn *next = c->incoming_next;
    unsigned ops = c->ops;
    c->ops = 0;
    c->queued = 0;
    pthread_mutex_unlock(&t->incoming_lock);
    if (ops & OP_STREAM_OPEN) stream_open(c);
    if (ops & (OP_RELAY | OP_SETUP)) start(c, ops & OP_SETUP);
    if (ops & OP_CUT) stream_cut(c);
    if (ops & OP_JOIN) start_joined(c);
    if (ops & OP_DROP) drop(c);
    c = next;
  }
}

/** OP_RELAY, OP_SETUP: registers a new connection's sockets, then runs it once (what came before gives no event). */
static void start(conn *c, int setting_up) {
  struct epoll_event event = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
  int failed = 0;
  if (!setting_up) {
    event.data.ptr = &c->a;
    failed = epoll_ctl(c->thread->epoll_fd, EPOLL_CTL_ADD, c->a.fd, &event);
  }
  if (failed == 0) {
    event.data.ptr = &c->b;
    failed = epoll_ctl(c->thread->epoll_fd, EPOLL_CTL_ADD, c->b.fd, &event);
  }
  // finish() deletes both registrations (one may not exist) and reports the errno. A set-up that cannot start is
  // reported as a set-up first (JS then drops it).
  if (failed != 0 && setting_up) park(c, -errno);
  else if (failed != 0) finish(c, errno);
  else run_conn(c);
}

/** OP_JOIN: registers side a of a parked connection JS joined, and starts relaying. */
static void start_joined(conn *c) {
  struct epoll_event event = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &c->a};
  if (epoll_ctl(c->thread->epoll_fd, EPOLL_CTL_ADD, c->a.fd, &event) != 0 || join(c) != 0) finish(c, errno);
  else run_conn(c);
}

static void *relay_thread_main(void *arg) {
  relay_thread *t = arg;
  struct epoll_event events[EVENTS_PER_WAIT];
  for (;;) {
    int timeout = t->again ? 0 : t->lingering ? LINGER_CHECK_MS : -1;
    int n = epoll_wait(t->epoll_fd, events, EVENTS_PER_WAIT, timeout);
    for (int i = 0; i < n; i++) {
      side *s = events[i].data.ptr;
      if (s == NULL) {
        take_incoming(t);
        continue;
      }
      uint32_t what = events[i].events;
      if (what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        s->readable = 1;
        // Bytes came after OpenSSL's last recv: a read served from its buffer must not count that recv as the last.
        s->drained = 0;
      }
      if (what & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) s->ending = 1;
      run_conn(s->owner);
    }
    if (t->lingering) check_lingerers(t);
    // After every way a connection can finish in this round, and before they are reported (and freed by JS): what
    // run_again leaves in t->again has not finished.
    run_again(t);
    // What this batch queued to other nodes goes out in one write per mux; a failed write finishes its carrier.
    if (t->flush) mux_flush_all(t);
    report_finished(t);
  }
  return NULL;
}

/** Starts `count` relay threads the first time; later calls keep the pool as it is. */
static const char *start_pool(int count) {
  const char *failure = NULL;
  pthread_mutex_lock(&pool_lock);
  if (pool_size == 0) {
    if (count < 1) count = 1;
    if (count > MAX_THREADS) count = MAX_THREADS;
    for (int i = 0; i < count; i++) {
      relay_thread *t = &pool[pool_size];
      t->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
      t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      struct epoll_event wake = {.events = EPOLLIN, .data.ptr = NULL};
      if (t->epoll_fd < 0 || t->wake_fd < 0 || epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, t->wake_fd, &wake) != 0) {
        if (t->epoll_fd >= 0) close(t->epoll_fd);
        if (t->wake_fd >= 0) close(t->wake_fd);
        failure = "epoll or eventfd failed";
        break;
      }
      pthread_mutex_init(&t->incoming_lock, NULL);
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
      pthread_t id;
      int started = pthread_create(&id, &attr, relay_thread_main, t);
      pthread_attr_destroy(&attr);
      if (started != 0) {
        close(t->epoll_fd);
        close(t->wake_fd);
        failure = "pthread_create failed";
        break;
      }
      // What top -H and ps -L show for it.
      pthread_setname_np(id, "swarmd-relay");
      pool_size++;
    }
    // Some threads started: use those.
    if (pool_size > 0) failure = NULL;
    // Without them native hops are off and the data path serves tunnels only (native-relay.ts asks dataPath()).
    dial_ctx = new_tls_context(0);
    serve_ctx = new_tls_context(1);
  }
  pthread_mutex_unlock(&pool_lock);
  return failure;
}

// ---------------------------------------------------------------------------------------------------------------
// JS side

/** Drops a parked connection that JS has not claimed (and will not): with no status byte. */
static void drop_unclaimed(conn *c) {
  pthread_mutex_lock(&c->env->lock);
  int mine = !c->claimed;
  c->claimed = 1;
  pthread_mutex_unlock(&c->env->lock);
  c->join_status = -1;
  if (mine) queue_op(c, OP_DROP);
}

/**
 * A data path connection's set-up is over: onSetup(result, header, identity) on its JS thread, which then joins or
 * drops it. result: the status byte (dialer), 0 (server: header holds the remote header, without its length
 * prefix), SETUP_LEGACY (server: a legacy tunnel), or -errno. env is NULL when that thread is going away: the
 * connection is dropped, as nobody will join it.
 */
static void call_setup(napi_env env, conn *c) {
  if (env == NULL) {
    drop_unclaimed(c);
    return;
  }
  if (c->kind == KIND_STREAM && c->is_server) {
    // Opened by the peer: this thread's serveStreams function takes it, or nobody does and it is refused.
    if (!stream_report(env, c)) drop_unclaimed(c);
    return;
  }
  napi_value on_setup, receiver, argv[3];
  if (napi_get_reference_value(env, c->on_setup, &on_setup) != napi_ok || on_setup == NULL) return;
  napi_get_undefined(env, &receiver);
  napi_create_int32(env, c->setup_result, &argv[0]);
  if (c->is_server && c->setup_result == 0)
    napi_create_buffer_copy(env, c->setup_length - 2, c->setup + 2, NULL, &argv[1]);
  else
    napi_get_undefined(env, &argv[1]);
  napi_create_string_utf8(env, c->identity, NAPI_AUTO_LENGTH, &argv[2]);
  napi_call_function(env, receiver, on_setup, 3, argv, NULL);
}

/**
 * A mux's carrier is set up: onSetup(SETUP_MUX, undefined, identity). It runs on, and its end is reported later in
 * the same queue, so c is still there.
 */
static void call_mux_up(napi_env env, conn *c) {
  napi_value on_setup, receiver, argv[3];
  if (env == NULL || napi_get_reference_value(env, c->on_setup, &on_setup) != napi_ok || on_setup == NULL) return;
  napi_get_undefined(env, &receiver);
  napi_create_int32(env, SETUP_MUX, &argv[0]);
  napi_get_undefined(env, &argv[1]);
  napi_create_string_utf8(env, c->identity, NAPI_AUTO_LENGTH, &argv[2]);
  napi_call_function(env, receiver, on_setup, 3, argv, NULL);
}

/**
 * Runs on the JS thread that started the connection: reports its result and frees it. env is NULL if that thread
 * is gone. A carrier's "up" report comes as its address plus one (report_mux_up), as it has no report field of
 * its own: its end may be queued right behind it.
 */
static void call_done(napi_env env, napi_value unused, void *context, void *data) {
  (void)unused;
  (void)context;
  if ((uintptr_t)data & 1) {
    call_mux_up(env, (conn *)((uintptr_t)data - 1));
    return;
  }
  conn *c = data;
  if (c->report == REPORT_SETUP) {
    call_setup(env, c);
    return;
  }
  if (env != NULL) {
    napi_value on_done, receiver, argv[3];
    // A stream a peer opened has none until serveStreams's function gave one.
    if (c->on_done != NULL && napi_get_reference_value(env, c->on_done, &on_done) == napi_ok && on_done != NULL) {
      napi_get_undefined(env, &receiver);
      napi_create_double(env, (double)atomic_load(&c->a_to_b.bytes), &argv[0]);
      napi_create_double(env, (double)atomic_load(&c->b_to_a.bytes), &argv[1]);
      napi_create_int32(env, c->error, &argv[2]);
      napi_call_function(env, receiver, on_done, 3, argv, NULL);
    }
    if (c->on_done != NULL) napi_delete_reference(env, c->on_done);
    if (c->on_setup != NULL) napi_delete_reference(env, c->on_setup);
  }
  conn_free(c);
}

/** Queues a carrier's "up" report to its JS thread (see call_done); nothing when that thread is going away. */
void report_mux_up(conn *c) {
  env_state *env = c->env;
  pthread_mutex_lock(&env->lock);
  if (!env->closing) napi_call_threadsafe_function(env->done_calls, (void *)((uintptr_t)c + 1), napi_tsfn_nonblocking);
  pthread_mutex_unlock(&env->lock);
}

/** The JS thread is going away: cut its connections. Their results are then freed without calling JS. */
static void env_cleanup(void *arg) {
  env_state *env = arg;
  pthread_mutex_lock(&env->lock);
  env->closing = 1;
  for (conn *c = env->conns; c != NULL; c = c->env_next) {
    if (c->phase == PHASE_PARKED && !c->claimed) {
      // Parked, and JS will never join or drop it now: dropped (its set-up report, if queued, then does nothing).
      c->claimed = 1;
      c->join_status = -1;
      queue_op(c, OP_DROP);
      continue;
    }
    // A stream still setting up has no socket: its mux, on this thread too, is shut down, which fails it.
    if (c->a.fd >= 0) shutdown(c->a.fd, SHUT_RDWR);
    if (c->b.fd >= 0) shutdown(c->b.fd, SHUT_RDWR);
  }
  pthread_mutex_unlock(&env->lock);
  if (env->on_stream != NULL) napi_delete_reference(env->env, env->on_stream);
  env_unref(env);
}

napi_value throw_error(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

/** throw_error for functions that return a pointer. */
void *fail(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

int get_int(napi_env env, napi_value value, int64_t *out) {
  return napi_get_value_int64(env, value, out) == napi_ok;
}

/** start(threads): starts the relay threads (the first call's count wins). */
static napi_value js_start(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t threads;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || !get_int(env, argv[0], &threads))
    return throw_error(env, "start(threads) needs a number of threads");
  const char *failure = start_pool((int)threads);
  if (failure != NULL) return throw_error(env, failure);
  napi_value count;
  napi_create_int32(env, pool_size, &count);
  return count;
}

static int dup_nonblocking(int fd) {
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return -1;
  int flags = fcntl(copy, F_GETFL);
  if (flags < 0 || fcntl(copy, F_SETFL, flags | O_NONBLOCK) < 0) {
    close(copy);
    return -1;
  }
  return copy;
}

/** Sets TCP_NODELAY: each chunk goes out as it comes, as the JS path does (noDelay). */
static void no_delay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/**
 * A new connection of this JS thread, side b a duplicate of fd_b, on the next relay thread; NULL with a JS error
 * thrown when it cannot be made.
 */
static conn *new_conn(napi_env env, env_state *state, int64_t fd_b, napi_value on_done) {
  if (pool_size == 0) return fail(env, "relay: start() was not called");
  if (fd_b < 0 || fd_b > INT32_MAX) return fail(env, "relay: bad descriptor");
  conn *c = calloc(1, sizeof *c);
  if (c == NULL) return fail(env, "relay: out of memory");
  c->a.fd = -1;
  c->b.fd = dup_nonblocking((int)fd_b);
  if (c->b.fd < 0) {
    int error = errno;
    free(c);
    return fail(env, error == EMFILE ? "relay: too many open files" : "relay: cannot take the descriptor");
  }
  no_delay(c->b.fd);
  c->a.owner = c->b.owner = c;
  // Registered, then run once (take_incoming): what came before registration gives no event.
  c->a.readable = c->b.readable = 1;
  c->env = state;
  c->join_status = -1;
  c->thread = &pool[atomic_fetch_add(&next_thread, 1) % (unsigned)pool_size];
  napi_create_reference(env, on_done, 1, &c->on_done);
  return c;
}

/** Enters a new connection in its JS thread's list and queues it to its relay thread; returns its handle. */
void env_enter(conn *c) {
  env_state *state = c->env;
  atomic_fetch_add(&state->refs, 1);
  pthread_mutex_lock(&state->lock);
  c->open = 1;
  c->env_next = state->conns;
  if (c->env_next) c->env_next->env_prev = c;
  state->conns = c;
  pthread_mutex_unlock(&state->lock);
}

napi_value adopt(napi_env env, env_state *state, conn *c, int op) {
  c->env = state;
  env_enter(c);
  // To its relay thread, which registers it and runs it from then on (and may finish it at once). Nothing of c is
  // touched here after this but through the lock.
  queue_op(c, op);
  napi_value handle;
  napi_create_external(env, c, NULL, NULL, &handle);
  return handle;
}

env_state *state_of(napi_env env) {
  env_state *state;
  if (napi_get_instance_data(env, (void **)&state) != napi_ok || state == NULL) {
    throw_error(env, "relay: module not initialised for this thread");
    return NULL;
  }
  return state;
}

int is_function(napi_env env, napi_value value) {
  napi_valuetype type;
  return napi_typeof(env, value, &type) == napi_ok && type == napi_function;
}

/** relay(fdA, fdB, lingerMs, onDone(bytesAtoB, bytesBtoA, errno)): returns a handle for bytes() and cut(). */
static napi_value js_relay(napi_env env, napi_callback_info info) {
  env_state *state = state_of(env);
  size_t argc = 4;
  napi_value argv[4];
  int64_t fd_a, fd_b, linger_ms;
  if (state == NULL) return NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 || !get_int(env, argv[0], &fd_a) ||
      !get_int(env, argv[1], &fd_b) || !get_int(env, argv[2], &linger_ms) || !is_function(env, argv[3]))
    return throw_error(env, "relay(fdA, fdB, lingerMs, onDone) needs two descriptors, a number and a function");
  if (fd_a < 0 || fd_a > INT32_MAX) return throw_error(env, "relay: bad descriptor");
  conn *c = new_conn(env, state, fd_b, argv[3]);
  if (c == NULL) return NULL;
  c->a.fd = dup_nonblocking((int)fd_a);
  if (c->a.fd < 0) {
    int error = errno;
    close(c->b.fd);
    napi_delete_reference(env, c->on_done);
    free(c);
    return throw_error(env, error == EMFILE ? "relay: too many open files" : "relay: cannot take the descriptors");
  }
  no_delay(c->a.fd);
  c->linger_ms = linger_ms < 0 ? 0 : linger_ms;
  return adopt(env, state, c, OP_RELAY);
}

/**
 * Called by OpenSSL around each read of a TLS side's socket BIO: notes whether the recv(2) came back short or
 * empty (side->drained), which only the socket knows.
 */
static long bio_watch(BIO *bio, int operation, const char *data, size_t length, int argi, long argl, int result,
                      size_t *processed) {
  (void)data, (void)argi, (void)argl;
  if (operation == (BIO_CB_READ | BIO_CB_RETURN)) {
    side *s = (side *)BIO_get_callback_arg(bio);
    s->drained = result <= 0 || (processed != NULL && *processed < length);
  }
  return result;
}

/** A data path connection on fd: its set-up state, TLS session and set-up buffer; NULL with a JS error thrown. */
static conn *new_data_path_conn(napi_env env, env_state *state, int64_t fd, int server, napi_value on_setup,
                                napi_value on_done) {
  SSL_CTX *ctx = server ? serve_ctx : dial_ctx;
  if (ctx == NULL) return fail(env, "relay: TLS is not available in this process");
  conn *c = new_conn(env, state, fd, on_done);
  if (c == NULL) return NULL;
  c->is_server = server;
  c->phase = server ? PHASE_CLASSIFY : PHASE_SEND_MAGIC;
  c->setup = malloc(HEADER_MAX_BYTES);
  c->b.ssl = SSL_new(ctx);
  if (c->setup == NULL || c->b.ssl == NULL || !SSL_set_fd(c->b.ssl, c->b.fd)) {
    ERR_clear_error();
    SSL_free(c->b.ssl);
    free(c->setup);
    close(c->b.fd);
    napi_delete_reference(env, c->on_done);
    free(c);
    return fail(env, "relay: cannot make a TLS session");
  }
  SSL_set_app_data(c->b.ssl, c);
  BIO *socket_bio = SSL_get_rbio(c->b.ssl);
  BIO_set_callback_ex(socket_bio, bio_watch);
  BIO_set_callback_arg(socket_bio, (char *)&c->b);
  if (server) SSL_set_accept_state(c->b.ssl);
  else SSL_set_connect_state(c->b.ssl);
  napi_create_reference(env, on_setup, 1, &c->on_setup);
  return c;
}

/** Copies a Buffer or Uint8Array argument; its length, or -1 when it is not one. */
int64_t get_bytes(napi_env env, napi_value value, void *out, size_t max) {
  void *data;
  size_t length;
  bool is_buffer;
  if (napi_is_buffer(env, value, &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, value, &data, &length) != napi_ok || length > max)
    return -1;
  memcpy(out, data, length);
  return (int64_t)length;
}

/**
 * dial(fd, identity, key, header, onSetup, onDone): sets up a connected socket to another node's data path with a
 * ticket (identity: 32 hex characters, key: 32 bytes) and sends header (encodeRemoteHeader's bytes); onSetup gets
 * the status byte. Returns the handle for join(), drop(), cut() and bytes().
 */
static napi_value js_dial(napi_env env, napi_callback_info info) {
  env_state *state = state_of(env);
  size_t argc = 6;
  napi_value argv[6];
  int64_t fd;
  char identity[IDENTITY_CHARS + 2];
  size_t identity_length;
  unsigned char key[PSK_KEY_BYTES];
  unsigned char header[HEADER_MAX_BYTES];
  if (state == NULL) return NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 || !get_int(env, argv[0], &fd) ||
      napi_get_value_string_utf8(env, argv[1], identity, sizeof identity, &identity_length) != napi_ok ||
      identity_length != IDENTITY_CHARS || get_bytes(env, argv[2], key, sizeof key) != PSK_KEY_BYTES ||
      !is_function(env, argv[4]) || !is_function(env, argv[5]))
    return throw_error(env, "dial(fd, identity, key, header, onSetup, onDone): bad arguments");
  int64_t header_length = get_bytes(env, argv[3], header, sizeof header);
  if (header_length < 3) return throw_error(env, "dial: the header must be 3 to 1026 bytes");
  conn *c = new_data_path_conn(env, state, fd, 0, argv[4], argv[5]);
  if (c == NULL) return NULL;
  memcpy(c->identity, identity, IDENTITY_CHARS + 1);
  memcpy(c->key, key, PSK_KEY_BYTES);
  OPENSSL_cleanse(key, sizeof key);
  memcpy(c->setup, header, (size_t)header_length);
  c->setup_length = (size_t)header_length;
  return adopt(env, state, c, OP_SETUP);
}

/**
 * dialMux(fd, identity, key, thread, onSetup, onDone): sets up a mux (mux.c) on a connected socket to another
 * node's data path, on relay thread `thread` (modulo their number), where all its streams run. onSetup gets
 * SETUP_MUX once it is up, or -errno; onDone its end. Returns the handle for openStream() and cut().
 */
static napi_value js_dial_mux(napi_env env, napi_callback_info info) {
  env_state *state = state_of(env);
  size_t argc = 6;
  napi_value argv[6];
  int64_t fd, thread;
  char identity[IDENTITY_CHARS + 2];
  size_t identity_length;
  unsigned char key[PSK_KEY_BYTES];
  if (state == NULL) return NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 || !get_int(env, argv[0], &fd) ||
      napi_get_value_string_utf8(env, argv[1], identity, sizeof identity, &identity_length) != napi_ok ||
      identity_length != IDENTITY_CHARS || get_bytes(env, argv[2], key, sizeof key) != PSK_KEY_BYTES ||
      !get_int(env, argv[3], &thread) || thread < 0 || !is_function(env, argv[4]) || !is_function(env, argv[5]))
    return throw_error(env, "dialMux(fd, identity, key, thread, onSetup, onDone): bad arguments");
  conn *c = new_data_path_conn(env, state, fd, 0, argv[4], argv[5]);
  if (c == NULL) return NULL;
  c->kind = KIND_MUX;
  c->thread = &pool[thread % pool_size];
  c->mux = mux_new(c);
  if (c->mux == NULL) {
    SSL_free(c->b.ssl);
    free(c->setup);
    close(c->b.fd);
    napi_delete_reference(env, c->on_done);
    napi_delete_reference(env, c->on_setup);
    free(c);
    return throw_error(env, "dialMux: out of memory");
  }
  memcpy(c->identity, identity, IDENTITY_CHARS + 1);
  memcpy(c->key, key, PSK_KEY_BYTES);
  OPENSSL_cleanse(key, sizeof key);
  return adopt(env, state, c, OP_SETUP);
}

/**
 * accept(fd, onSetup, onDone, owner): sets up a connection accepted on the data path port; onSetup gets the header.
 * Where it is a mux, its streams go to serveStreams's function with `owner`, so JS knows whose they are.
 */
static napi_value js_accept(napi_env env, napi_callback_info info) {
  env_state *state = state_of(env);
  size_t argc = 4;
  napi_value argv[4];
  int64_t fd, owner;
  if (state == NULL) return NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 || !get_int(env, argv[0], &fd) ||
      !is_function(env, argv[1]) || !is_function(env, argv[2]) || !get_int(env, argv[3], &owner))
    return throw_error(env, "accept(fd, onSetup, onDone, owner): bad arguments");
  conn *c = new_data_path_conn(env, state, fd, 1, argv[1], argv[2]);
  if (c == NULL) return NULL;
  c->owner = owner;
  return adopt(env, state, c, OP_SETUP);
}

/** dataPath(): whether this process can set up native hops (its TLS contexts were made). */
static napi_value js_data_path(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_get_boolean(env, dial_ctx != NULL && serve_ctx != NULL, &result);
  return result;
}

/** addKey(identity, key, ttlMs): a ticket's key, good for handshakes on this process's data path for ttlMs. */
static napi_value js_add_key(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char identity[IDENTITY_CHARS + 2];
  size_t identity_length;
  unsigned char key[PSK_KEY_BYTES];
  int64_t ttl_ms;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_string_utf8(env, argv[0], identity, sizeof identity, &identity_length) != napi_ok ||
      identity_length != IDENTITY_CHARS || get_bytes(env, argv[1], key, sizeof key) != PSK_KEY_BYTES ||
      !get_int(env, argv[2], &ttl_ms))
    return throw_error(env, "addKey(identity, key, ttlMs) needs 32 hex characters, 32 bytes and a number");
  psk_add(identity, key, ttl_ms);
  OPENSSL_cleanse(key, sizeof key);
  return NULL;
}

/**
 * The connection behind a handle. JS calls cut() and bytes() only until its onDone has run, and the connection is
 * freed only after that (call_done), so the pointer is valid; whether its descriptors are still open is another
 * matter (see open).
 */
conn *conn_of(napi_env env, napi_value handle) {
  conn *c;
  return napi_get_value_external(env, handle, (void **)&c) == napi_ok ? c : NULL;
}

/** cut(handle): ends the connection now (both sides get EOF, then the relay finishes and reports). */
static napi_value js_cut(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  conn *c;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || (c = conn_of(env, argv[0])) == NULL)
    return throw_error(env, "cut(handle) needs a handle");
  pthread_mutex_lock(&c->env->lock);
  if (c->open) {
    if (c->a.fd >= 0) shutdown(c->a.fd, SHUT_RDWR);
    if (c->b.fd >= 0) shutdown(c->b.fd, SHUT_RDWR);
    // A stream's other side is its mux: its relay thread resets it there (or fails it, while it waits for its
    // STATUS and has no socket yet).
    if (c->kind == KIND_STREAM) {
      atomic_store(&c->cut_requested, 1);
      queue_op(c, OP_CUT);
    }
  }
  pthread_mutex_unlock(&c->env->lock);
  return NULL;
}

/** A parked connection of this thread that JS has not joined or dropped yet; NULL with a JS error thrown. */
static conn *claim_parked(napi_env env, napi_value handle) {
  conn *c = conn_of(env, handle);
  if (c == NULL) return fail(env, "needs a handle");
  pthread_mutex_lock(&c->env->lock);
  int ok = c->phase == PHASE_PARKED && !c->claimed;
  if (ok) c->claimed = 1;
  pthread_mutex_unlock(&c->env->lock);
  return ok ? c : fail(env, "the connection is not waiting to be joined or dropped");
}

/**
 * join(handle, fd, status, lingerMs): a parked data path connection relays between fd (side a: the client, or the
 * task) and its node; status (0-255) is sent to the dialer first, -1 sends none. onDone follows at the end.
 */
static napi_value js_join(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t fd, status, linger_ms;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 || !get_int(env, argv[1], &fd) ||
      !get_int(env, argv[2], &status) || !get_int(env, argv[3], &linger_ms) || fd < 0 || fd > INT32_MAX ||
      status < -1 || status > 255)
    return throw_error(env, "join(handle, fd, status, lingerMs): bad arguments");
  int copy = dup_nonblocking((int)fd);
  if (copy < 0) return throw_error(env, errno == EMFILE ? "join: too many open files" : "join: cannot take the descriptor");
  conn *c = claim_parked(env, argv[0]);
  if (c == NULL) {
    close(copy);
    return NULL;
  }
  no_delay(copy);
  c->a.fd = copy;
  c->join_status = (int)status;
  c->linger_ms = linger_ms < 0 ? 0 : linger_ms;
  queue_op(c, OP_JOIN);
  return NULL;
}

/** drop(handle, status): ends a parked connection, status (0-255) sent first where the session is up; -1: none. */
static napi_value js_drop(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int64_t status;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || !get_int(env, argv[1], &status) ||
      status < -1 || status > 255)
    return throw_error(env, "drop(handle, status): bad arguments");
  conn *c = claim_parked(env, argv[0]);
  if (c == NULL) return NULL;
  c->join_status = (int)status;
  queue_op(c, OP_DROP);
  return NULL;
}

/** bytes(handle, out): writes the bytes relayed so far (a to b, b to a) into out, a Float64Array of 2. */
static napi_value js_bytes(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  conn *c;
  napi_typedarray_type type;
  size_t length;
  void *data;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_typedarray_info(env, argv[1], &type, &length, &data, NULL, NULL) != napi_ok ||
      type != napi_float64_array || length < 2 || (c = conn_of(env, argv[0])) == NULL)
    return throw_error(env, "bytes(handle, out) needs a handle and a Float64Array of 2");
  ((double *)data)[0] = (double)atomic_load(&c->a_to_b.bytes);
  ((double *)data)[1] = (double)atomic_load(&c->b_to_a.bytes);
  return NULL;
}

napi_value export_function(napi_env env, napi_value exports, const char *name, napi_callback callback) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, callback, NULL, &fn);
  napi_set_named_property(env, exports, name, fn);
  return exports;
}

NAPI_MODULE_INIT() {
  env_state *state = calloc(1, sizeof *state);
  if (state == NULL) return throw_error(env, "relay: out of memory");
  pthread_mutex_init(&state->lock, NULL);
  atomic_init(&state->refs, 1);
  napi_value name;
  napi_create_string_utf8(env, "swarmd relay results", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, call_done, &state->done_calls) !=
      napi_ok) {
    free(state);
    return throw_error(env, "relay: cannot create its thread-safe function");
  }
  // Results waiting must not keep an otherwise finished process alive; JS keeps what needs keeping.
  napi_unref_threadsafe_function(env, state->done_calls);
  state->env = env;
  napi_set_instance_data(env, state, NULL, NULL);
  napi_add_env_cleanup_hook(env, env_cleanup, state);
  export_function(env, exports, "start", js_start);
  export_function(env, exports, "relay", js_relay);
  export_function(env, exports, "cut", js_cut);
  export_function(env, exports, "bytes", js_bytes);
  export_function(env, exports, "dial", js_dial);
  export_function(env, exports, "accept", js_accept);
  export_function(env, exports, "join", js_join);
  export_function(env, exports, "drop", js_drop);
  export_function(env, exports, "addKey", js_add_key);
  export_function(env, exports, "dataPath", js_data_path);
  export_function(env, exports, "dialMux", js_dial_mux);
  mux_exports(env, exports);
  return exports;
}
