/*
 * A probe, not part of the broker: `fsync` and `fdatasync` replaced by a sleep of
 * FLUSH_SLEEP_US microseconds (default 0), so that a commit still waits as long as a
 * flush takes, but nothing asks the disk to flush. On this project's VMs a flush stops
 * the whole machine for a moment (docs/performance.md, "What limits it now"); with this
 * library preloaded, the bench shows what the broker's latency would be on a disk whose
 * flushes cost only their time. Data written under it is NOT durable: use it for
 * measurements only, never for a broker that holds anything.
 *
 *   gcc -O2 -shared -fPIC -o /tmp/flush_sleep.so bench/flush_sleep.c
 *   LD_PRELOAD=/tmp/flush_sleep.so FLUSH_SLEEP_US=500 \
 *     taskset -c 1 deno task bench --vs mosquitto --scenario mqtt-rate --duration 10
 *
 * Every process the bench starts inherits the preload; only MessageBroker flushes (not
 * with --fsync-load, whose flushes it would replace too). At exit each process that
 * flushed prints how many calls it replaced.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long sleep_us = -1;
static long calls = 0;

static void flush_wait(void) {
  if (sleep_us < 0) {
    const char *value = getenv("FLUSH_SLEEP_US");
    sleep_us = value ? atol(value) : 0;
  }
  __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
  if (sleep_us > 0) {
    struct timespec t = {sleep_us / 1000000, (sleep_us % 1000000) * 1000};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
  }
}

int fsync(int fd) {
  (void)fd;
  flush_wait();
  return 0;
}

int fdatasync(int fd) {
  (void)fd;
  flush_wait();
  return 0;
}

__attribute__((destructor)) static void report(void) {
  if (calls == 0) return;
  char line[80];
  int n = snprintf(line, sizeof line, "flush_sleep: %ld flushes replaced\n", calls);
  (void)!write(2, line, (size_t)n);
}
