// swarmd's native TCP relay: moves the bytes of forwarded connections between two connected sockets, off the
// JavaScript thread. The load balancer (forwarder.ts) still accepts each client, picks a task, connects to it,
// retries and writes the PROXY header in JavaScript; once both sockets are connected it hands their file
// descriptors here (native-relay.ts), and this file does what pump.ts would do, without a JS callback, a Buffer
// or a libuv round trip per chunk. On the lb bench that is the difference between about half of HAProxy's
// requests/s and HAProxy's own.
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
// directions until they block again. An EOF from one side is passed on as shutdown(SHUT_WR) to the other once its
// bytes are flushed (half-close, as pump.ts). The connection ends when both directions have, or at the first error.
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
#define _GNU_SOURCE
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

typedef struct env_state env_state;
typedef struct relay_thread relay_thread;
typedef struct conn conn;

/** One side of a connection as epoll sees it: the descriptor, and the connection it belongs to. */
typedef struct {
  int fd;
  conn *owner;
} side;

/** One direction: bytes read from one side, not yet written to the other. */
typedef struct {
  /** What the destination did not take yet (malloc'd, NULL when all is written), from start to end. */
  char *pending;
  size_t start, end;
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
};

/** Per JS thread (napi_env): its thread-safe function and the connections it started. */
struct env_state {
  napi_threadsafe_function done_calls;
  pthread_mutex_t lock;
  conn *conns;
  int closing;
  /** 1 for the JS thread, plus one per connection; freed at 0. */
  _Atomic int refs;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static relay_thread pool[MAX_THREADS];
static _Atomic int pool_size;
static _Atomic unsigned next_thread;

static int64_t now_ms(void) {
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

static ssize_t send_some(int destination, const char *bytes, size_t length) {
  return send(destination, bytes, length, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/**
 * Moves what it can from source to destination, up to READS_PER_TURN reads. Returns 0 when it has to wait, the
 * errno that ends the connection, or MORE_TO_DO.
 */
static int run_direction(direction *d, int source, int destination, char *scratch) {
  for (int reads = 0;; reads++) {
    if (d->pending != NULL) {
      ssize_t n = send_some(destination, d->pending + d->start, d->end - d->start);
      if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : errno;
      d->start += (size_t)n;
      atomic_fetch_add_explicit(&d->bytes, (uint64_t)n, memory_order_relaxed);
      if (d->start < d->end) continue;
      free(d->pending);
      d->pending = NULL;
    }
    if (d->source_ended) {
      if (!d->done) {
        d->done = 1;
        // ENOTCONN: the destination is already gone; its own direction reports that.
        shutdown(destination, SHUT_WR);
      }
      return 0;
    }
    if (reads == READS_PER_TURN) return MORE_TO_DO;
    ssize_t got = recv(source, scratch, BUFFER_BYTES, MSG_DONTWAIT);
    if (got < 0) return errno == EAGAIN || errno == EINTR ? 0 : errno;
    if (got == 0) {
      d->source_ended = 1;
      continue;
    }
    ssize_t sent = send_some(destination, scratch, (size_t)got);
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
static void finish(conn *c, int error) {
  c->finished = 1;
  c->error = error;
  linger_unlink(c);
  env_state *env = c->env;
  // Marked closed under the lock before the descriptors are closed: JS shutdown()s them only while open, so it can
  // never reach a descriptor number that has been closed and reused by something else.
  pthread_mutex_lock(&env->lock);
  c->open = 0;
  if (c->env_prev) c->env_prev->env_next = c->env_next;
  else env->conns = c->env_next;
  if (c->env_next) c->env_next->env_prev = c->env_prev;
  pthread_mutex_unlock(&env->lock);
  epoll_ctl(c->thread->epoll_fd, EPOLL_CTL_DEL, c->a.fd, NULL);
  epoll_ctl(c->thread->epoll_fd, EPOLL_CTL_DEL, c->b.fd, NULL);
  close(c->a.fd);
  close(c->b.fd);
  free(c->a_to_b.pending);
  free(c->b_to_a.pending);
  c->a_to_b.pending = c->b_to_a.pending = NULL;
  c->linger_next = c->thread->finished;
  c->thread->finished = c;
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
    if (!queued) free(c);
    env_unref(env);
  }
}

static void run_conn(conn *c) {
  if (c->finished) return;
  uint64_t moved_before = bytes_moved(c);
  char *scratch = c->thread->scratch;
  int up = run_direction(&c->a_to_b, c->a.fd, c->b.fd, scratch);
  int down = up > 0 ? 0 : run_direction(&c->b_to_a, c->b.fd, c->a.fd, scratch);
  int error = up > 0 ? up : down > 0 ? down : 0;
  if (error != 0 || (c->a_to_b.done && c->b_to_a.done)) {
    finish(c, error);
    return;
  }
  if ((up == MORE_TO_DO || down == MORE_TO_DO) && !c->in_again) {
    c->in_again = 1;
    c->again_next = c->thread->again;
    c->thread->again = c;
  }
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

/** Registers the connections JS has queued, and runs each once (what arrived before is waiting already). */
static void take_incoming(relay_thread *t) {
  uint64_t count;
  while (read(t->wake_fd, &count, sizeof count) > 0) {
  }
  pthread_mutex_lock(&t->incoming_lock);
  conn *c = t->incoming;
  t->incoming = NULL;
  pthread_mutex_unlock(&t->incoming_lock);
  while (c) {
    conn *next = c->incoming_next;
    struct epoll_event event = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    event.data.ptr = &c->a;
    int failed = epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, c->a.fd, &event);
    event.data.ptr = &c->b;
    if (failed == 0) failed = epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, c->b.fd, &event);
    // finish() deletes both registrations (one may not exist) and reports the errno.
    if (failed != 0) finish(c, errno);
    else run_conn(c);
    c = next;
  }
}

static void *relay_thread_main(void *arg) {
  relay_thread *t = arg;
  struct epoll_event events[EVENTS_PER_WAIT];
  for (;;) {
    int timeout = t->again ? 0 : t->lingering ? LINGER_CHECK_MS : -1;
    int n = epoll_wait(t->epoll_fd, events, EVENTS_PER_WAIT, timeout);
    for (int i = 0; i < n; i++) {
      side *s = events[i].data.ptr;
      if (s == NULL) take_incoming(t);
      else run_conn(s->owner);
    }
    if (t->lingering) check_lingerers(t);
    // After every way a connection can finish in this round, and before they are reported (and freed by JS): what
    // run_again leaves in t->again has not finished.
    run_again(t);
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
  }
  pthread_mutex_unlock(&pool_lock);
  return failure;
}

// ---------------------------------------------------------------------------------------------------------------
// JS side

/** Runs on the JS thread that started the connection: reports its result and frees it. env is NULL if that thread is gone. */
static void call_done(napi_env env, napi_value unused, void *context, void *data) {
  (void)unused;
  (void)context;
  conn *c = data;
  if (env != NULL) {
    napi_value on_done, receiver, argv[3];
    if (napi_get_reference_value(env, c->on_done, &on_done) == napi_ok && on_done != NULL) {
      napi_get_undefined(env, &receiver);
      napi_create_double(env, (double)atomic_load(&c->a_to_b.bytes), &argv[0]);
      napi_create_double(env, (double)atomic_load(&c->b_to_a.bytes), &argv[1]);
      napi_create_int32(env, c->error, &argv[2]);
      napi_call_function(env, receiver, on_done, 3, argv, NULL);
    }
    napi_delete_reference(env, c->on_done);
  }
  free(c);
}

/** The JS thread is going away: cut its connections. Their results are then freed without calling JS. */
static void env_cleanup(void *arg) {
  env_state *env = arg;
  pthread_mutex_lock(&env->lock);
  env->closing = 1;
  for (conn *c = env->conns; c != NULL; c = c->env_next) {
    shutdown(c->a.fd, SHUT_RDWR);
    shutdown(c->b.fd, SHUT_RDWR);
  }
  pthread_mutex_unlock(&env->lock);
  env_unref(env);
}

static napi_value throw_error(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

static int get_int(napi_env env, napi_value value, int64_t *out) {
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

/** relay(fdA, fdB, lingerMs, onDone(bytesAtoB, bytesBtoA, errno)): returns a handle for bytes() and cut(). */
static napi_value js_relay(napi_env env, napi_callback_info info) {
  env_state *state;
  size_t argc = 4;
  napi_value argv[4];
  int64_t fd_a, fd_b, linger_ms;
  napi_valuetype callback_type;
  if (napi_get_instance_data(env, (void **)&state) != napi_ok || state == NULL)
    return throw_error(env, "relay: module not initialised for this thread");
  if (pool_size == 0) return throw_error(env, "relay: start() was not called");
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 || !get_int(env, argv[0], &fd_a) ||
      !get_int(env, argv[1], &fd_b) || !get_int(env, argv[2], &linger_ms) ||
      napi_typeof(env, argv[3], &callback_type) != napi_ok || callback_type != napi_function)
    return throw_error(env, "relay(fdA, fdB, lingerMs, onDone) needs two descriptors, a number and a function");
  if (fd_a < 0 || fd_b < 0 || fd_a > INT32_MAX || fd_b > INT32_MAX) return throw_error(env, "relay: bad descriptor");

  conn *c = calloc(1, sizeof *c);
  if (c == NULL) return throw_error(env, "relay: out of memory");
  c->a.fd = dup_nonblocking((int)fd_a);
  c->b.fd = c->a.fd < 0 ? -1 : dup_nonblocking((int)fd_b);
  if (c->b.fd < 0) {
    int error = errno;
    if (c->a.fd >= 0) close(c->a.fd);
    free(c);
    return throw_error(env, error == EMFILE ? "relay: too many open files" : "relay: cannot take the descriptors");
  }
  // Each chunk goes out as it comes, as the JS path does (noDelay).
  int one = 1;
  setsockopt(c->a.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(c->b.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->a.owner = c->b.owner = c;
  c->linger_ms = linger_ms < 0 ? 0 : linger_ms;
  c->env = state;
  c->thread = &pool[atomic_fetch_add(&next_thread, 1) % (unsigned)pool_size];
  napi_create_reference(env, argv[3], 1, &c->on_done);

  atomic_fetch_add(&state->refs, 1);
  pthread_mutex_lock(&state->lock);
  c->open = 1;
  c->env_next = state->conns;
  if (c->env_next) c->env_next->env_prev = c;
  state->conns = c;
  pthread_mutex_unlock(&state->lock);

  // To its relay thread, which registers it and runs it from then on (and may finish it at once). Nothing of c is
  // touched here after this but through the lock.
  relay_thread *t = c->thread;
  pthread_mutex_lock(&t->incoming_lock);
  c->incoming_next = t->incoming;
  t->incoming = c;
  pthread_mutex_unlock(&t->incoming_lock);
  uint64_t one_more = 1;
  // Cannot fail but on a counter overflow (2^64 wakes); the thread reads it down at each wake.
  (void)!write(t->wake_fd, &one_more, sizeof one_more);
  napi_value handle;
  napi_create_external(env, c, NULL, NULL, &handle);
  return handle;
}

/**
 * The connection behind a handle. JS calls cut() and bytes() only until its onDone has run, and the connection is
 * freed only after that (call_done), so the pointer is valid; whether its descriptors are still open is another
 * matter (see open).
 */
static conn *conn_of(napi_env env, napi_value handle) {
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
    shutdown(c->a.fd, SHUT_RDWR);
    shutdown(c->b.fd, SHUT_RDWR);
  }
  pthread_mutex_unlock(&c->env->lock);
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

static napi_value export_function(napi_env env, napi_value exports, const char *name, napi_callback callback) {
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
  napi_set_instance_data(env, state, NULL, NULL);
  napi_add_env_cleanup_hook(env, env_cleanup, state);
  export_function(env, exports, "start", js_start);
  export_function(env, exports, "relay", js_relay);
  export_function(env, exports, "cut", js_cut);
  export_function(env, exports, "bytes", js_bytes);
  return exports;
}
