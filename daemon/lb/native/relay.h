// The native relay's shared types (relay.c: relay threads, native hops, the JS bindings; mux.c: many streams over
// one data path connection). See relay.c's top for the design.
#ifndef SWARMD_RELAY_H
#define SWARMD_RELAY_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define BUFFER_BYTES (16 * 1024)
#define MAX_THREADS 64
#define EVENTS_PER_WAIT 256
/** How often a relay thread with lingering connections wakes to check their deadlines. */
#define LINGER_CHECK_MS 250
/**
 * Reads per direction in one turn (256 KiB): a connection whose source and destination both keep up could
 * otherwise keep its relay thread to itself; past this it waits for the thread's next turn behind the others.
 */
#define READS_PER_TURN 16
/** run_direction: the turn's reads are used up and more may be waiting. */
#define MORE_TO_DO (-1)

/** data-path.ts: a ticket's identity is 32 hex characters, its key 32 bytes. */
#define IDENTITY_CHARS 32
#define PSK_KEY_BYTES 32
/** remote.ts's REMOTE_HEADER_MAX_BYTES, plus its u16 length prefix. */
#define HEADER_MAX_BYTES (1024 + 2)

/** Where a connection is: relaying, or setting up a TLS connection between two nodes' data paths. */
enum {
  PHASE_RELAY,
  /** Server: waiting for the first bytes, to tell the native data path (MAGIC) from a legacy TLS tunnel. */
  PHASE_CLASSIFY,
  /** Dialer: sending MAGIC. */
  PHASE_SEND_MAGIC,
  PHASE_HANDSHAKE,
  /** Dialer: sending the remote header (remote.ts). */
  PHASE_SEND_HEADER,
  /** Dialer: waiting for the status byte. */
  PHASE_READ_STATUS,
  /** Server: reading the remote header. */
  PHASE_READ_HEADER,
  /** Set up (or failed to) and reported: events are ignored until JS joins or drops it. */
  PHASE_PARKED,
  /** A mux's carrier (mux.c), set up: it moves its streams' frames. */
  PHASE_MUX,
  /** A dialer's stream JS opened, its OPEN not sent yet (queued to the relay thread). */
  PHASE_STREAM_OPEN,
  /** A dialer's stream whose OPEN is sent: waiting for the server's STATUS frame. */
  PHASE_STREAM_WAIT,
};

/** What a conn is: a pair of sockets (a relay, or a native hop), a mux's carrier, or one stream of a mux. */
enum { KIND_PAIR, KIND_MUX, KIND_STREAM };

/**
 * What the relay thread does with a connection JS queued: bits, as a stream may have two queued at once (its OPEN
 * and a cut), run in this order.
 */
enum { OP_RELAY = 1, OP_SETUP = 2, OP_STREAM_OPEN = 4, OP_CUT = 8, OP_JOIN = 16, OP_DROP = 32 };

enum { REPORT_SETUP = 1, REPORT_DONE };

/** setup_result: the first byte was a TLS record, i.e. a legacy tunnel (HTTP/2 over TLS) that JS serves. */
#define SETUP_LEGACY 256
/** A mux's carrier is set up (reported without parking: it runs on). */
#define SETUP_MUX 257

typedef struct env_state env_state;
typedef struct relay_thread relay_thread;
typedef struct conn conn;
typedef struct mux mux;

/**
 * One side of a connection as epoll sees it: the descriptor, its TLS session when it is another node's data path
 * (side b only; see tls.c's part below), and the connection it belongs to.
 */
typedef struct {
  int fd;
  SSL *ssl;
  conn *owner;
  /**
   * Whether a read may find something. Cleared when a read proves the socket empty: an EAGAIN, or a short read
   * (fewer bytes than asked for, so the receive queue was drained), as nginx does with epoll. Edge-triggered epoll
   * reports every later arrival as a new event, which sets it again. Without it every event of a connection read
   * both sides until EAGAIN: two reads that could only fail per request and relay, more through TLS.
   */
  int readable;
  /** epoll reported the peer's FIN (EPOLLRDHUP) or an error: no event will follow, so read on until EOF or EAGAIN. */
  int ending;
  /** TLS side: its last recv(2) came back short or empty (bio_watch), so OpenSSL's next one would find nothing. */
  int drained;
} side;

/** One direction: bytes read from one side, not yet written to the other. */
typedef struct {
  /** What the destination did not take yet (malloc'd, NULL when all is written), from start to end. */
  char *pending;
  size_t start, end;
  /** pending's size (a stream's frames are appended to it, mux.c). */
  size_t capacity;
  /** The source side sent EOF. */
  int source_ended;
  /** EOF passed on: the destination was shut down for writing. */
  int done;
  /** Bytes written to the destination; read by JS at any time. */
  _Atomic uint64_t bytes;
} direction;

struct conn {
  side a, b;
  direction a_to_b, b_to_a;
  relay_thread *thread;
  env_state *env;
  /** In env->conns while its descriptors are open: what a JS thread that stops has to cut. */
  conn *env_prev, *env_next;
  /** In thread->lingering while one side ended and the other holds unsent bytes. */
  conn *linger_prev, *linger_next;
  /** In thread->again when its turn ended with bytes left to read. */
  conn *again_next;
  /** In thread->incoming until the relay thread has registered it. */
  conn *incoming_next;
  int in_again;
  int lingering;
  int64_t linger_deadline_ms;
  /** Bytes in both sides' send queues at the last check: a reader that takes some shrinks them. */
  int64_t linger_queued;
  int64_t linger_ms;
  int finished;
  /** Whether its descriptors are still open: JS may shutdown() them only then. Under env->lock. */
  int open;
  /** errno of the failure that ended it; 0 for a clean end. */
  int error;
  napi_ref on_done;
  /** PHASE_RELAY for a plain relay; a data path connection goes through the set-up phases first. */
  int phase;
  int is_server;
  /** What the relay thread does with it when it takes it from incoming (OP_*). */
  int op;
  /** JS (or its thread's going away) has queued the join or drop of this parked connection. Under env->lock. */
  int claimed;
  /** Which report is queued to JS: REPORT_SETUP or REPORT_DONE. */
  int report;
  /** The set-up's outcome: a status byte (dialer), 0 (server: the header is in setup), SETUP_LEGACY, or -errno. */
  int setup_result;
  /** Dialer: the header to send. Server: the header as it arrives (length prefix included). NULL once relaying. */
  unsigned char *setup;
  size_t setup_length, setup_done;
  /** Dialer: the ticket's identity and key. Server: the identity the peer used. */
  char identity[IDENTITY_CHARS + 1];
  unsigned char key[PSK_KEY_BYTES];
  napi_ref on_setup;
  /** OP_JOIN: the status byte to send before relaying (server), or -1. */
  int join_status;
  /** KIND_*. */
  int kind;
  /** A carrier: its mux. A stream: its mux, NULL once detached from it (mux.c). */
  mux *mux;
  /** OP_* bits queued, and whether it is in its thread's incoming list. Under thread->incoming_lock. */
  unsigned ops;
  int queued;
  /** A server's carrier, and its streams: whose streams they are (accept's `owner`, passed on to onStream). */
  int64_t owner;
  /** A stream JS cut while it had no socket to shut down (mux.c). */
  _Atomic int cut_requested;
  /** A stream's id, flow control and place in its mux (mux.c). */
  struct {
    uint32_t id;
    conn *bucket_next;
    /** Bytes it may still send before the peer grants more (CREDIT). */
    int64_t credit;
    /** Bytes written to side a since the last CREDIT sent. */
    uint64_t consumed;
    /** In mux->blocked: waits for the mux's send buffer to drain. */
    int blocked;
    conn *blocked_next;
    /** It has told the peer it is gone (RESET), or the peer has forgotten it (a refusal, a RESET). */
    int gone;
  } stream;
};

struct relay_thread {
  int epoll_fd;
  /** JS writes here after queueing a connection in incoming; in the epoll set with a NULL data.ptr. */
  int wake_fd;
  pthread_mutex_t incoming_lock;
  conn *incoming;
  /** Where every read lands first. */
  char scratch[BUFFER_BYTES];
  /** Touched by this thread only. */
  conn *lingering;
  /** Finished in the current batch of events, to report after it. */
  conn *finished;
  /** To run again in the next turn, without an event (epoll is edge-triggered: none would come). */
  conn *again;
  /** Muxes with frames to send at the end of this batch of events (mux.c). */
  mux *flush;
};

/** Per JS thread (napi_env): its thread-safe function and the connections it started. */
struct env_state {
  napi_threadsafe_function done_calls;
  pthread_mutex_t lock;
  conn *conns;
  int closing;
  /** 1 for the JS thread, plus one per connection; freed at 0. */
  _Atomic int refs;
  /** serveStreams(onStream): gets the streams peers open on the muxes this thread accepted (mux.c). */
  napi_ref on_stream;
  napi_env env;
};

extern relay_thread pool[MAX_THREADS];
extern _Atomic int pool_size;

int64_t now_ms(void);
int ssl_failure(SSL *ssl, int result);
ssize_t side_read(side *s, char *buffer, size_t length);
ssize_t side_write(side *s, const char *bytes, size_t length);
void finish(conn *c, int error);
void park(conn *c, int result);
void queue_op(conn *c, int op);
void mark_again(conn *c);
void keep_lingering(conn *c, uint64_t moved_before);
/** Enters a new conn in its JS thread's list and queues `op` to its relay thread; returns its handle. */
napi_value adopt(napi_env env, env_state *state, conn *c, int op);
/** Enters a conn the relay thread made (a stream a peer opened) in its JS thread's list. */
void env_enter(conn *c);
void report_mux_up(conn *c);
napi_value throw_error(napi_env env, const char *message);
void *fail(napi_env env, const char *message);
int get_int(napi_env env, napi_value value, int64_t *out);
int64_t get_bytes(napi_env env, napi_value value, void *out, size_t max);
int is_function(napi_env env, napi_value value);
env_state *state_of(napi_env env);
conn *conn_of(napi_env env, napi_value handle);

// mux.c
mux *mux_new(conn *carrier);
void mux_start(conn *carrier);
void mux_run(conn *carrier);
/** The carrier finished: its streams are detached and fail. */
void mux_gone(conn *carrier);
void mux_unref(mux *m);
void mux_flush_all(relay_thread *t);
void stream_run(conn *c);
void stream_open(conn *c);
void stream_cut(conn *c);
int stream_join(conn *c);
void stream_drop(conn *c);
/** A stream finished: out of its mux (a RESET sent where it ended badly). */
void stream_gone(conn *c, int error);
/** Calls serveStreams's function for a stream a peer opened; returns whether it was delivered. */
int stream_report(napi_env env, conn *c);
void mux_exports(napi_env env, napi_value exports);
napi_value export_function(napi_env env, napi_value exports, const char *name, napi_callback callback);

#endif
