/* vsock-probe: both ends of the virtio-vsock lab test (tests/tests/lab_virtio_vsock.rs).
 * Built static (gcc -static) by the test; busybox has no vsock and no Unix-socket client.
 *
 *   vsock-probe listen PORT             guest: accept one vsock connection, read a line,
 *                                       answer "ECHO <LINE UPPER-CASED>"
 *   vsock-probe connect CID PORT MSG    guest: send MSG as a line, print the answer
 *   vsock-probe uds-listen PATH         host: accept one connection on a Unix socket, read a
 *                                       line, answer "HOST-ACK <line>"
 *   vsock-probe uds-connect PATH PORT MSG
 *                                       host: "CONNECT PORT" through the VMM's socket, print
 *                                       its OK line, send MSG, print the answer
 *   vsock-probe sink PORT               guest: accept one connection, read to EOF, answer
 *                                       "GOT <bytes> <checksum>"
 *   vsock-probe send CID PORT BYTES     guest: send BYTES of a pattern, shut down writing,
 *                                       print "SENT ..." and the answer
 *   vsock-probe uds-sink PATH           host: as sink, on a Unix socket
 *   vsock-probe hold CID PORT           guest: connect, print "GUEST-HELD PORT", then wait in
 *                                       read() and print how it ended: "GUEST-HOLD-ENDED EOF"
 *                                       or the error
 *   vsock-probe uds-send PATH PORT BYTES
 *                                       host: as send, through the VMM's socket; also prints
 *                                       the transfer's MB/s (host clock)
 * Every outcome is one line on stdout; a watchdog ends it after 120 s. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int read_line(int fd, char *buf, size_t cap) {
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = 0;
    return (int)n;
}

static int write_all(int fd, const char *s, size_t len) {
    while (len > 0) {
        ssize_t w = write(fd, s, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        len -= (size_t)w;
    }
    return 0;
}

static int send_line(int fd, const char *prefix, const char *msg) {
    char out[600];
    int n = snprintf(out, sizeof out, "%s%s\n", prefix, msg);
    return write_all(fd, out, (size_t)n);
}

static int uds_addr(const char *path, struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path)
        return -1;
    strcpy(a->sun_path, path);
    return 0;
}

/* The bulk pattern and its checksum (FNV-1a over the bytes). */
static unsigned char pattern(uint64_t i) { return (unsigned char)(i * 7 + (i >> 12)); }

static uint32_t fnv(uint32_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sink(int c, const char *who) {
    static unsigned char buf[65536];
    uint64_t total = 0;
    uint32_t h = 2166136261u;
    for (;;) {
        ssize_t r = read(c, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        h = fnv(h, buf, (size_t)r);
        total += (uint64_t)r;
    }
    char line[128];
    snprintf(line, sizeof line, "%llu %08x", (unsigned long long)total, h);
    printf("%s-SINK %s\n", who, line);
    send_line(c, "GOT ", line);
    close(c);
}

/* Sends `bytes` of the pattern on `s`, shuts down writing, prints the answer. */
static void bulk_send(int s, uint64_t bytes, const char *who) {
    static unsigned char buf[65536];
    uint32_t h = 2166136261u;
    double t0 = now();
    for (uint64_t off = 0; off < bytes;) {
        size_t n = bytes - off < sizeof buf ? (size_t)(bytes - off) : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern(off + i);
        h = fnv(h, buf, n);
        if (write_all(s, (const char *)buf, n) < 0) {
            printf("%s-SEND-FAILED %s\n", who, strerror(errno));
            return;
        }
        off += n;
    }
    shutdown(s, SHUT_WR);
    char line[512];
    read_line(s, line, sizeof line);
    double dt = now() - t0;
    printf("%s-SENT %llu %08x\n", who, (unsigned long long)bytes, h);
    printf("%s-REPLY %s\n", who, line);
    printf("%s-MBPS %.1f\n", who, (double)bytes / dt / 1e6);
}

static int vsock_listen_one(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 4) < 0)
        return -1;
    printf("VSOCK-LISTENING %u\n", port);
    return accept(s, NULL, NULL);
}

static int uds_listen_one(const char *path) {
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    unlink(path);
    if (s < 0 || uds_addr(path, &a) < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(s, 4) < 0)
        return -1;
    printf("HOST-LISTENING %s\n", path);
    return accept(s, NULL, NULL);
}

static int guest_listen(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 4) < 0) {
        printf("GUEST-LISTEN-FAILED %s\n", strerror(errno));
        return 1;
    }
    printf("VSOCK-LISTENING %u\n", port);
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    if (c < 0) {
        printf("GUEST-ACCEPT-FAILED %s\n", strerror(errno));
        return 1;
    }
    char line[512];
    read_line(c, line, sizeof line);
    printf("GUEST-SERVED %s\n", line);
    for (char *p = line; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    send_line(c, "ECHO ", line);
    close(c);
    return 0;
}

/* A vsock connection to CID:PORT, or -1 after printing GUEST-CONNECT-FAILED. */
static int guest_dial(unsigned cid, unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        printf("GUEST-CONNECT-FAILED %u %s\n", port, strerror(errno));
        return -1;
    }
    return s;
}

static int guest_connect(unsigned cid, unsigned port, const char *msg) {
    int s = guest_dial(cid, port);
    if (s < 0)
        return 1;
    char line[512];
    send_line(s, "", msg);
    read_line(s, line, sizeof line);
    printf("GUEST-GOT %s\n", line);
    close(s);
    return 0;
}

static int host_listen(const char *path) {
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    unlink(path);
    if (s < 0 || uds_addr(path, &a) < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(s, 4) < 0) {
        printf("HOST-LISTEN-FAILED %s\n", strerror(errno));
        return 1;
    }
    printf("HOST-LISTENING %s\n", path);
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    if (c < 0)
        return 1;
    char line[512];
    read_line(c, line, sizeof line);
    printf("HOST-SERVED %s\n", line);
    send_line(c, "HOST-ACK ", line);
    close(c);
    return 0;
}

static int host_connect(const char *path, const char *port, const char *msg) {
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || uds_addr(path, &a) < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        printf("HOST-CONNECT-FAILED %s\n", strerror(errno));
        return 1;
    }
    char line[512];
    send_line(s, "CONNECT ", port);
    if (read_line(s, line, sizeof line) == 0) {
        printf("HOST-CLOSED %s\n", port);
        return 1;
    }
    printf("HOST-OK-LINE %s\n", line);
    send_line(s, "", msg);
    read_line(s, line, sizeof line);
    printf("HOST-GOT %s\n", line);
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    alarm(120);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && !strcmp(argv[1], "listen"))
        return guest_listen((unsigned)strtoul(argv[2], NULL, 10));
    if (argc == 5 && !strcmp(argv[1], "connect"))
        return guest_connect((unsigned)strtoul(argv[2], NULL, 10),
                             (unsigned)strtoul(argv[3], NULL, 10), argv[4]);
    if (argc == 3 && !strcmp(argv[1], "uds-listen"))
        return host_listen(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "uds-connect"))
        return host_connect(argv[2], argv[3], argv[4]);
    if (argc == 3 && !strcmp(argv[1], "sink")) {
        int c = vsock_listen_one((unsigned)strtoul(argv[2], NULL, 10));
        if (c < 0)
            return 1;
        sink(c, "GUEST");
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "uds-sink")) {
        int c = uds_listen_one(argv[2]);
        if (c < 0)
            return 1;
        sink(c, "HOST");
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "hold")) {
        int s = guest_dial((unsigned)strtoul(argv[2], NULL, 10),
                           (unsigned)strtoul(argv[3], NULL, 10));
        if (s < 0)
            return 1;
        printf("GUEST-HELD %s\n", argv[3]);
        char c;
        ssize_t r;
        do
            r = read(s, &c, 1);
        while (r < 0 && errno == EINTR);
        if (r < 0)
            printf("GUEST-HOLD-ENDED %s\n", strerror(errno));
        else
            printf("GUEST-HOLD-ENDED %s\n", r == 0 ? "EOF" : "DATA");
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "send")) {
        int s = guest_dial((unsigned)strtoul(argv[2], NULL, 10),
                           (unsigned)strtoul(argv[3], NULL, 10));
        if (s < 0)
            return 1;
        bulk_send(s, strtoull(argv[4], NULL, 10), "GUEST");
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "uds-send")) {
        struct sockaddr_un a;
        char line[512];
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0 || uds_addr(argv[2], &a) < 0 ||
            connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
            printf("HOST-CONNECT-FAILED %s\n", strerror(errno));
            return 1;
        }
        send_line(s, "CONNECT ", argv[3]);
        if (read_line(s, line, sizeof line) == 0) {
            printf("HOST-CLOSED %s\n", argv[3]);
            return 1;
        }
        bulk_send(s, strtoull(argv[4], NULL, 10), "HOST");
        return 0;
    }
    fprintf(stderr, "usage: vsock-probe listen PORT | connect CID PORT MSG | "
                    "uds-listen PATH | uds-connect PATH PORT MSG | sink PORT | "
                    "send CID PORT BYTES | uds-sink PATH | uds-send PATH PORT BYTES | hold CID PORT\n");
    return 2;
}
