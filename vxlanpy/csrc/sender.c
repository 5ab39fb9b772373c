/*
 * The sender thread (device -> wire as a pipeline): the transmit pump's thread reads the TAP,
 * classifies and cuts TCP super-frames into jobs; this thread sends the jobs (UDP GSO), so the
 * send, and the receive that veth runs inside it on the peer's side, use the other core. It
 * touches only its job ring, the counters (under the datapath's lock) and the sockets.
 */
#include <signal.h>
#include <stdlib.h>

#include "vx_internal.h"

static void *sender_main(void *arg)
{
    vx_dp *dp = arg;
    vx_sender *t = dp->sender;
    pthread_setname_np(pthread_self(), "vxlanpy-send");
    pthread_mutex_lock(&t->lock);
    for (;;) {
        while (t->head == t->tail && !t->stop)
            pthread_cond_wait(&t->work, &t->lock);
        if (t->head == t->tail)
            break; /* stopped and drained */
        vx_job *j = &t->jobs[t->tail % VX_SENDER_JOBS];
        pthread_mutex_unlock(&t->lock);
        int rc = vx_udp_send(j->fd, &j->b, 0, j->n, j->r.sa, j->r.salen, &dp->no_gso,
                             &j->outer);
        vx_count_send(dp, &dp->segs[j->seg], &j->r, &j->b, 0, j->n, rc, j->bytes);
        pthread_mutex_lock(&dp->lock);
        dp->c.sender_jobs++;
        pthread_mutex_unlock(&dp->lock);
        pthread_mutex_lock(&t->lock);
        __atomic_store_n(&t->tail, t->tail + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&t->done);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

/* Wait until the sender thread (if any) has sent every queued job. */
void vx_sender_drain(vx_dp *dp)
{
    vx_sender *t = dp->sender;
    if (t == NULL || __atomic_load_n(&t->head, __ATOMIC_ACQUIRE) ==
                         __atomic_load_n(&t->tail, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&t->lock);
    while (t->head != t->tail)
        pthread_cond_wait(&t->done, &t->lock);
    pthread_mutex_unlock(&t->lock);
}

/* The job the pump fills next (waits while all are queued). */
vx_job *vx_sender_claim(vx_sender *t)
{
    pthread_mutex_lock(&t->lock);
    while (t->head - t->tail >= VX_SENDER_JOBS)
        pthread_cond_wait(&t->done, &t->lock);
    vx_job *j = &t->jobs[t->head % VX_SENDER_JOBS];
    pthread_mutex_unlock(&t->lock);
    return j;
}

/* Queue the job vx_sender_claim gave. */
void vx_sender_push(vx_sender *t)
{
    pthread_mutex_lock(&t->lock);
    __atomic_store_n(&t->head, t->head + 1, __ATOMIC_RELEASE);
    pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->lock);
}

static void sender_free(vx_sender *t)
{
    for (int k = 0; k < VX_SENDER_JOBS; k++)
        vx_batch_release(&t->jobs[k].b);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->work);
    pthread_cond_destroy(&t->done);
    free(t);
}

/* Start a thread of the datapath's (the sender, the datapath thread) with every signal blocked:
 * signals stay with the threads that expect them (a handler run here would cut system calls
 * short with EINTR, and Python's own handling does not need these threads). 0 or an errno. */
int vx_thread_start(pthread_t *thread, void *(*main)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(thread, NULL, main, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Send what is queued, then end the thread. */
void vx_sender_stop(vx_dp *dp)
{
    vx_sender *t = dp->sender;
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    t->stop = 1;
    pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    dp->sender = NULL;
    sender_free(t);
}

/*
 * Start the sender thread; its jobs hold VX_MAX_CHUNKS chunks of the datapath's chunk size.
 * Returns 0 (also if it runs already) or -errno. Call it before pumping, from the thread that
 * pumps.
 */
int vx_sender_start(vx_dp *dp)
{
    if (dp->sender != NULL)
        return 0;
    vx_sender *t = calloc(1, sizeof(vx_sender));
    if (t == NULL)
        return -ENOMEM;
    int bad = 0;
    for (int k = 0; k < VX_SENDER_JOBS; k++)
        bad |= vx_batch_alloc(&t->jobs[k].b, VX_MAX_CHUNKS, dp->chunk_max_frame) < 0;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->work, NULL);
    pthread_cond_init(&t->done, NULL);
    if (bad) {
        sender_free(t);
        return -ENOMEM;
    }
    dp->sender = t;
    int rc = vx_thread_start(&t->thread, sender_main, dp);
    if (rc != 0) {
        dp->sender = NULL;
        sender_free(t);
        return -rc;
    }
    return 0;
}

/* Super-frames the sender thread has sent, or -1 if there is no sender thread. */
int64_t vx_sender_sent(vx_dp *dp)
{
    vx_sender *t = dp->sender;
    return t == NULL ? -1 : (int64_t)__atomic_load_n(&t->tail, __ATOMIC_ACQUIRE);
}
