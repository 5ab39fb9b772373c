/*
 * The datapath thread: waits in epoll on the TAPs and the UDP socket and runs the pumps
 * itself, so that a frame whose action is installed crosses vxlanpy without the interpreter or
 * the event loop (their wake-up after idle is what a ping paid: docs/performance.md). It holds
 * no policy: it runs vx_tx_pump / vx_rx_pump, and whatever they leave for the engine (upcalls,
 * an error, a TAP that is gone, received datagrams still waiting) it *holds*: it records what
 * the pump returned, tells the event loop (an eventfd the loop reads), and parks until the
 * engine, which then owns the datapath and its batches, releases it.
 *
 * epoll, not poll(2): the descriptors are registered once, and a wake-up looks only at the
 * ones that are ready. poll(2) registered on every descriptor's wait queue and asked each one
 * again after every wake-up, which after an idle spell ran cold: with the TAP, the socket and
 * the kick, about 12 µs of a ping's echo more than a forwarder polling two (docs/performance.md),
 * and it grew with the number of TAPs.
 *
 * Any other call into the datapath from another thread (installing entries, dumps, the
 * engine's own pumps) parks the thread first: vx_dp_exclusive_begin (vx_internal.h) at the top
 * of those functions, nested sections counted; the counters are read under dp->lock and
 * do not park it.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "vx_internal.h"

struct vx_loop {
    pthread_t thread;
    pthread_mutex_t m;
    pthread_cond_t cv;
    int kick;                  /* eventfd: wakes the thread's poll (a pause, a stop) */
    int notify;                /* eventfd: the event loop's reader (something is held) */
    int ep;                    /* epoll: the TAPs (data k), the socket (ntaps), kick (ntaps+1) */
    uint32_t ntaps;
    int taps[VX_LOOP_TAPS];
    uint32_t vnis[VX_LOOP_TAPS];
    int udp;
    vx_batch *txb, *rxb;
    uint32_t rounds, spill, busy_us;
    uint32_t adapt_us;         /* adaptive poll: spin this long after work while work is dense */
    uint32_t pauses;           /* callers that want the thread parked */
    int parked, stop;
    vx_loop_held held;         /* kind VX_HELD_NONE: nothing held */
    struct epoll_event ev[VX_LOOP_TAPS + 2];
};

static void loop_free(vx_loop *L)
{
    if (L->kick >= 0)
        close(L->kick);
    if (L->notify >= 0)
        close(L->notify);
    if (L->ep >= 0)
        close(L->ep);
    pthread_mutex_destroy(&L->m);
    pthread_cond_destroy(&L->cv);
    free(L);
}

/* A pass that finds work this long after the last one (a wake-up after a sleep, or a frame
 * while spinning idle) reads one frame first: it goes out before the TAP is asked for more
 * (vx_tx_pump_first), and the read that would find the queue empty is not on its path. */
#define VX_QUIET_US 1000u

static void kick(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof one);
    (void)r; /* an eventfd write fails only when its counter is full: it is readable then */
}

/* Record what a pump left for the engine and tell the event loop. */
static void hold(vx_loop *L, const vx_loop_held *h)
{
    pthread_mutex_lock(&L->m);
    L->held = *h;
    kick(L->notify);
    pthread_mutex_unlock(&L->m);
}

/* One pass over the ready descriptors (nev events of L->ev), now_ms the time epoll returned;
 * quiet: the first work after an idle spell (a frame read alone first). Returns 1 if
 * something ran (for busy polling). */
static int pass(vx_dp *dp, vx_loop *L, int nev, int quiet, uint64_t now_ms, int *again)
{
    int worked = 0, sent = 0, udp = 0;
    *again = 0;
    for (int e = 0; e < nev; e++) {
        uint32_t k = L->ev[e].data.u32;
        if (k == L->ntaps)
            udp = (L->ev[e].events & (EPOLLIN | EPOLLERR)) != 0;
        if (k >= L->ntaps || !(L->ev[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
            continue;
        uint32_t up = 0;
        int n = vx_tx_pump_first(dp, L->vnis[k], L->txb, L->rounds,
                                 quiet ? 1 : L->txb->capacity, &up);
        worked = 1;
        if (n < 0 || up) {
            vx_loop_held h = {.kind = VX_HELD_TX, .vni = L->vnis[k], .n = n, .upcalls = up};
            hold(L, &h);
            return worked;
        }
        if ((uint32_t)n == L->txb->capacity)
            *again = 1; /* a full batch: the TAP may hold more */
        sent |= n > 0;
    }
    /* After a send the socket is tried even if epoll did not see it readable: over a veth (or
     * loopback) the peer's answer is often queued by the time sendmsg returns, and a wait
     * just to learn that costs a ping a system call; an empty socket costs one recvmmsg. */
    if (udp || sent) {
        uint32_t out[2] = {0, 0};
        int64_t gone = -1;
        int n = vx_rx_pump(dp, L->udp, L->rxb, now_ms, L->rounds, L->spill, out, &gone);
        worked = 1;
        if (n < 0 || out[0] || out[1] == VX_RX_PENDING) {
            vx_loop_held h = {.kind = VX_HELD_RX, .vni = -1, .n = n, .upcalls = out[0],
                              .more = out[1], .gone = gone};
            hold(L, &h);
            return worked;
        }
        if (out[1] == VX_RX_MORE)
            *again = 1;
    }
    return worked;
}

static void *loop_main(void *arg)
{
    vx_dp *dp = arg;
    vx_loop *L = dp->loop;
    pthread_setname_np(pthread_self(), "vxlanpy-dp");
    uint64_t last_work = 0;
    int again = 0, dense = 0; /* dense: the last two passes that worked were < adapt_us apart */
    pthread_mutex_lock(&L->m);
    for (;;) {
        while ((L->pauses || L->held.kind != VX_HELD_NONE) && !L->stop) {
            L->parked = 1;
            pthread_cond_broadcast(&L->cv);
            pthread_cond_wait(&L->cv, &L->m);
        }
        L->parked = 0;
        if (L->stop)
            break;
        uint32_t busy = L->busy_us, adapt = L->adapt_us;
        pthread_mutex_unlock(&L->m);
        /* sleep in epoll, but after work spin while the last work is recent: always
         * (--busy-poll), or while packets come closer together than the adaptive window
         * (--adaptive-poll): a flow keeps the thread awake, a ping every 10 ms does not */
        int spin = again;
        if (!spin && (busy || dense)) { /* one clock read for both windows */
            uint64_t since = vx_now_us() - last_work;
            spin = (busy && since < busy) || (dense && since < adapt);
        }
        int r = epoll_wait(L->ep, L->ev, (int)L->ntaps + 2, spin ? 0 : -1);
        if (r > 0) {
            uint64_t t = vx_now_us();
            for (int e = 0; e < r; e++) {
                if (L->ev[e].data.u32 == L->ntaps + 1) {
                    uint64_t v;
                    ssize_t rr = read(L->kick, &v, sizeof v);
                    (void)rr;
                }
            }
            /* the clock is read here, at the wake-up, and not after the pass: between a
             * pass's last TAP write and the next wait only the loop's bookkeeping runs, since
             * with the application on this vCPU whatever ran there would delay its wake-up */
            if (pass(dp, L, r, t - last_work >= VX_QUIET_US, t / 1000u, &again)) {
                dense = t - last_work < adapt;
                last_work = t;
            }
        } else if (r == 0) {
            again = 0;
            sched_yield(); /* spinning: let a runnable thread of this core go first */
        } else {
            again = 0;
        }
        pthread_mutex_lock(&L->m);
    }
    L->parked = 1;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->m);
    return NULL;
}

int vx_dp_exclusive_begin(vx_dp *dp)
{
    vx_loop *L = dp->loop;
    if (L == NULL || pthread_equal(pthread_self(), L->thread))
        return 0;
    pthread_mutex_lock(&L->m);
    L->pauses++; /* nested sections, several callers: each adds one */
    if (!L->parked) {
        kick(L->kick);
        while (!L->parked)
            pthread_cond_wait(&L->cv, &L->m);
    }
    pthread_mutex_unlock(&L->m);
    return 1;
}

void vx_dp_exclusive_end(vx_dp *dp)
{
    vx_loop *L = dp->loop;
    if (L == NULL || pthread_equal(pthread_self(), L->thread))
        return;
    pthread_mutex_lock(&L->m);
    if (L->pauses > 0 && --L->pauses == 0)
        pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->m);
}

void vx_dp_exclusive_cleanup(vx_dp **dpp)
{
    if (*dpp != NULL)
        vx_dp_exclusive_end(*dpp);
}

void vx_loop_pause(vx_dp *dp)
{
    vx_dp_exclusive_begin(dp);
}

void vx_loop_resume(vx_dp *dp)
{
    vx_dp_exclusive_end(dp);
}

int vx_loop_start(vx_dp *dp, const int *tap_fds, const uint32_t *vnis, uint32_t ntaps,
                  int udp_fd, vx_batch *txb, vx_batch *rxb, uint32_t rounds, uint32_t spill,
                  uint32_t busy_us, uint32_t adapt_us)
{
    if (dp->loop != NULL)
        return -EBUSY;
    if (ntaps > VX_LOOP_TAPS)
        return -E2BIG;
    if (rxb->capacity > VX_MAX_BATCH || txb->capacity > VX_MAX_BATCH || spill >= rxb->capacity)
        return -EINVAL;
    vx_loop *L = calloc(1, sizeof *L);
    if (L == NULL)
        return -ENOMEM;
    pthread_mutex_init(&L->m, NULL);
    pthread_cond_init(&L->cv, NULL);
    L->kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->notify = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->ep = epoll_create1(EPOLL_CLOEXEC);
    int bad = L->kick < 0 || L->notify < 0 || L->ep < 0;
    for (uint32_t k = 0; !bad && k < ntaps + 2; k++) {
        int fd = k < ntaps ? tap_fds[k] : k == ntaps ? udp_fd : L->kick;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = k};
        bad = epoll_ctl(L->ep, EPOLL_CTL_ADD, fd, &ev) < 0;
    }
    if (bad) {
        int e = errno;
        loop_free(L);
        return -e;
    }
    memcpy(L->taps, tap_fds, ntaps * sizeof *tap_fds);
    memcpy(L->vnis, vnis, ntaps * sizeof *vnis);
    L->ntaps = ntaps;
    L->udp = udp_fd;
    L->txb = txb;
    L->rxb = rxb;
    L->rounds = rounds;
    L->spill = spill;
    L->busy_us = busy_us;
    L->adapt_us = adapt_us;
    L->held.kind = VX_HELD_NONE;
    dp->loop = L;
    int rc = vx_thread_start(&L->thread, loop_main, dp);
    if (rc != 0) {
        dp->loop = NULL;
        loop_free(L);
        return -rc;
    }
    return 0;
}

int vx_loop_notify_fd(vx_dp *dp)
{
    return dp->loop == NULL ? -1 : dp->loop->notify;
}

int vx_loop_held_get(vx_dp *dp, vx_loop_held *out)
{
    vx_loop *L = dp->loop;
    if (L == NULL)
        return 0;
    uint64_t v;
    ssize_t r = read(L->notify, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&L->m);
    *out = L->held;
    pthread_mutex_unlock(&L->m);
    return out->kind != VX_HELD_NONE;
}

void vx_loop_release(vx_dp *dp)
{
    vx_loop *L = dp->loop;
    if (L == NULL)
        return;
    pthread_mutex_lock(&L->m);
    L->held.kind = VX_HELD_NONE;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->m);
}

void vx_loop_stop(vx_dp *dp)
{
    vx_loop *L = dp->loop;
    if (L == NULL || pthread_equal(pthread_self(), L->thread))
        return;
    pthread_mutex_lock(&L->m);
    L->stop = 1;
    kick(L->kick);
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->m);
    pthread_join(L->thread, NULL);
    dp->loop = NULL;
    loop_free(L);
}

int vx_loop_running(vx_dp *dp)
{
    return dp->loop != NULL;
}
