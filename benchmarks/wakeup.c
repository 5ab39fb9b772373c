/*
 * What waking a sleeping thread costs on this host, on the same vCPU and on another: two
 * threads pass a byte back and forth through two pipes, each round trip after GAP_US of
 * idle (a ping's 10 ms by default), ROUNDS times; prints p50 / p90 / p99 in µs. A CPU of -1
 * leaves that thread to the scheduler. docs/performance.md (the Intel host) uses it:
 *
 *   gcc -O2 -pthread -o /tmp/wakeup benchmarks/wakeup.c
 *   /tmp/wakeup 0 0; /tmp/wakeup 0 1; /tmp/wakeup -1 -1      # CPU_A CPU_B [GAP_US [ROUNDS]]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int there[2], back[2];

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        perror("sched_setaffinity");
}

static void *echo(void *arg)
{
    pin(*(int *)arg);
    char c;
    while (read(there[0], &c, 1) == 1)
        if (write(back[1], &c, 1) != 1)
            break;
    return NULL;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: wakeup CPU_A CPU_B [GAP_US [ROUNDS]]\n");
        return 2;
    }
    int cpu_a = atoi(argv[1]), cpu_b = atoi(argv[2]);
    int gap = argc > 3 ? atoi(argv[3]) : 10000, rounds = argc > 4 ? atoi(argv[4]) : 300;
    if (gap < 0 || rounds < 1 || rounds > 100000) {
        fprintf(stderr, "wakeup: GAP_US >= 0 and ROUNDS 1..100000\n");
        return 2;
    }
    double *us = malloc(sizeof *us * (size_t)rounds);
    if (us == NULL || pipe(there) != 0 || pipe(back) != 0) {
        perror("wakeup");
        return 1;
    }
    pin(cpu_a);
    pthread_t t;
    if (pthread_create(&t, NULL, echo, &cpu_b) != 0) {
        perror("pthread_create");
        return 1;
    }
    for (int i = 0; i < rounds; i++) {
        usleep((useconds_t)gap);
        uint64_t t0 = now_ns();
        char c = 'x';
        if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1) {
            perror("wakeup");
            return 1;
        }
        us[i] = (double)(now_ns() - t0) / 1000.0;
    }
    qsort(us, (size_t)rounds, sizeof *us, by_value);
    printf("cpu %d <-> cpu %d, %d us idle: p50 %.1f  p90 %.1f  p99 %.1f us\n", cpu_a, cpu_b, gap,
           us[rounds / 2], us[rounds * 9 / 10], us[rounds * 99 / 100]);
    close(there[1]);
    pthread_join(t, NULL);
    free(us);
    return 0;
}
