/* Target for lagtrace's bounded-memory tests: thread or process churn. On
 * SIGUSR1 it runs --threads short-lived threads (with --processes 1:
 * forked child processes instead, each looping on its main thread),
 * --batch at a time (a pause of
 * --pause-ms between batches keeps the kernel's thread table from filling
 * before lagtrace forgets the exited ones). Each thread is a tiny event
 * loop: --waits epoll_wait calls with a zero timeout, so --waits - 1
 * iterations; every --stall-every-th thread sleeps --stall-ms inside one
 * iteration (one blocking span). It then writes the exact totals to
 * --truth as {"kind":"done","threads":N,"iterations":I,"spans":S}, prints
 * "DONE", and idles until SIGTERM/SIGINT (exit 0).
 *
 * Protocol: prints "READY <pid>" first.
 * Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o thread_churn thread_churn.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static int waits = 10, stall_every = 100, stall_ms = 60;

static void *tiny_loop(void *arg)
{
    long index = (long)arg;
    struct epoll_event ev;
    int epfd = epoll_create1(0);
    prctl(PR_SET_NAME, "churn", 0, 0, 0);
    for (int i = 0; i < waits; i++) {
        epoll_wait(epfd, &ev, 1, 0);
        if (index % stall_every == 0 && i == waits / 2)
            usleep(stall_ms * 1000);
    }
    close(epfd);
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 2000, batch = 8, pause_ms = 25, processes = 0;
    const char *truth = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        long v = atol(argv[i + 1]);
        if (!strcmp(argv[i], "--threads")) threads = v;
        else if (!strcmp(argv[i], "--batch")) batch = v;
        else if (!strcmp(argv[i], "--processes")) processes = v;
        else if (!strcmp(argv[i], "--pause-ms")) pause_ms = v;
        else if (!strcmp(argv[i], "--waits")) waits = (int)v;
        else if (!strcmp(argv[i], "--stall-every")) stall_every = (int)v;
        else if (!strcmp(argv[i], "--stall-ms")) stall_ms = (int)v;
        else if (!strcmp(argv[i], "--truth")) truth = argv[i + 1];
    }
    if (!truth || batch < 1 || batch > 64 || waits < 2) {
        fprintf(stderr, "usage: thread_churn --truth FILE [--threads N] [--batch B<=64] ...\n");
        return 2;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    printf("READY %d\n", getpid());
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    if (sig != SIGUSR1)
        return 0;
    long spans = 0;
    for (long done = 0; done < threads;) {
        pthread_t t[64];
        long n = threads - done < batch ? threads - done : batch;
        pid_t kids[64];
        for (long j = 0; j < n; j++) {
            if ((done + j) % stall_every == 0)
                spans++;
            if (!processes) {
                pthread_create(&t[j], NULL, tiny_loop, (void *)(done + j));
            } else if ((kids[j] = fork()) == 0) {
                tiny_loop((void *)(done + j));
                _exit(0);
            }
        }
        for (long j = 0; j < n; j++) {
            if (processes)
                waitpid(kids[j], NULL, 0);
            else
                pthread_join(t[j], NULL);
        }
        done += n;
        usleep(pause_ms * 1000);
    }
    FILE *f = fopen(truth, "w");
    if (!f)
        return 1;
    fprintf(f, "{\"kind\":\"done\",\"threads\":%ld,\"iterations\":%ld,\"spans\":%ld}\n", threads,
            threads * (waits - 1), spans);
    fclose(f);
    printf("DONE\n");
    fflush(stdout);
    do
        sigwait(&set, &sig);
    while (sig == SIGUSR1);
    return 0;
}
