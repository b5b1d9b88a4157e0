#define _GNU_SOURCE /* strcasestr */
/*
 * api-request SOCKET METHOD PATH [BODY]: one HTTP/1.1 request to vireo-vmm's control API on a
 * Unix socket, for the lab, which has no curl. Prints the response's status code on the first
 * line, then its body. Exits 0 when a response came back, 1 otherwise (with one line on
 * stderr). Built static by the lab tests (gcc -static).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int fail(const char *what)
{
    perror(what);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: api-request SOCKET METHOD PATH [BODY]\n");
        return 2;
    }
    const char *body = argc == 5 ? argv[4] : "";
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "api-request: socket path too long\n");
        return 1;
    }
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return fail("api-request: socket");
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return fail("api-request: connect");

    char req[8192];
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.1\r\nHost: vm\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     argv[2], argv[3], strlen(body), body);
    if (n < 0 || (size_t)n >= sizeof(req)) {
        fprintf(stderr, "api-request: request too long\n");
        return 1;
    }
    for (int off = 0; off < n;) {
        ssize_t w = write(fd, req + off, n - off);
        if (w < 0)
            return fail("api-request: write");
        off += w;
    }
    /* The API keeps the connection open for more requests: read until the headers and
     * Content-Length bytes of body are in. */
    static char resp[65536];
    size_t got = 0;
    char *end = NULL;
    size_t want = 0;
    for (;;) {
        if (got == sizeof(resp) - 1) {
            fprintf(stderr, "api-request: response too large\n");
            return 1;
        }
        ssize_t r = read(fd, resp + got, sizeof(resp) - 1 - got);
        if (r < 0)
            return fail("api-request: read");
        got += r;
        resp[got] = 0;
        if (!end && (end = strstr(resp, "\r\n\r\n"))) {
            const char *cl = strcasestr(resp, "content-length:");
            want = (end - resp) + 4 + (cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0);
        }
        if (end && got >= want)
            break;
        if (r == 0) {
            fprintf(stderr, "api-request: connection closed before a full response\n");
            return 1;
        }
    }
    int code;
    if (sscanf(resp, "HTTP/1.1 %d", &code) != 1) {
        fprintf(stderr, "api-request: not an HTTP response\n");
        return 1;
    }
    printf("%d\n%.*s\n", code, (int)(want - (end - resp) - 4), end + 4);
    return 0;
}
