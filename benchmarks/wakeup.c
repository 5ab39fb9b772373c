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
#include <string.h>
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

/* argv[i] as an integer in lo..hi, or dflt when absent; exits with usage on anything else */
static int arg(int argc, char **argv, int i, int lo, int hi, int dflt)
{
    if (i >= argc)
        return dflt;
    char *end;
    long v = strtol(argv[i], &end, 10);
    if (*argv[i] == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "wakeup: %s: want an integer %d..%d\n", argv[i], lo, hi);
        exit(2);
    }
    return (int)v;
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
    int cpu_a = arg(argc, argv, 1, -1, CPU_SETSIZE - 1, -1);
    int cpu_b = arg(argc, argv, 2, -1, CPU_SETSIZE - 1, -1);
    int gap = arg(argc, argv, 3, 0, 1000000, 10000), rounds = arg(argc, argv, 4, 1, 100000, 300);
    double *us = malloc(sizeof *us * (size_t)rounds);
    if (us == NULL || pipe(there) != 0 || pipe(back) != 0) {
        perror("wakeup");
        return 1;
    }
    pthread_t t; /* started before main pins itself: a thread inherits its creator's CPUs */
    int rc = pthread_create(&t, NULL, echo, &cpu_b);
    if (rc != 0) {
        fprintf(stderr, "pthread_create: %s\n", strerror(rc));
        return 1;
    }
    pin(cpu_a);
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
