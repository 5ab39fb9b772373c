/*
 * A minimal VXLAN forwarder in C: the floor of what any userspace VTEP pays on this host.
 *
 * One TAP, one peer, one packet per system call: poll(2) on the TAP and the UDP socket
 * (sleeping, or spinning with --spin), read a frame and sendto(2) it behind an 8-byte VXLAN
 * header; receive a datagram, check the I flag and the VNI, write the frame. No batching, no
 * offloads, no FDB, no source-port entropy. Its footprint is a few hundred bytes of code, so
 * its latency shows what waking a process and crossing the TAP and the socket cost here,
 * without an interpreter or an event loop (benchmarks/e2e.py, pair cfwd-kernel).
 *
 *   c_forwarder TAP LOCAL REMOTE VNI DSTPORT [--spin]
 *
 * The caller gives the TAP its address and MTU and sets it up; it prints "cfwd ready" on
 * stderr once the TAP and the socket exist and runs until it is killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define VXLAN_HLEN 8

static int die(const char *what)
{
    fprintf(stderr, "cfwd: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: c_forwarder TAP LOCAL REMOTE VNI DSTPORT [--spin]\n");
        return 2;
    }
    int spin = argc > 6 && strcmp(argv[6], "--spin") == 0;
    unsigned long vni = strtoul(argv[4], NULL, 10);
    unsigned long port = strtoul(argv[5], NULL, 10);
    if (vni >= 1UL << 24 || port == 0 || port > 65535) {
        fprintf(stderr, "cfwd: bad VNI or port\n");
        return 2;
    }
    int tap = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (tap < 0)
        return die("/dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (ioctl(tap, TUNSETIFF, &ifr) < 0)
        return die("TUNSETIFF");
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (udp < 0)
        return die("socket");
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct sockaddr_in remote = local;
    if (inet_pton(AF_INET, argv[2], &local.sin_addr) != 1 ||
        inet_pton(AF_INET, argv[3], &remote.sin_addr) != 1) {
        fprintf(stderr, "cfwd: bad IPv4 address\n");
        return 2;
    }
    if (bind(udp, (struct sockaddr *)&local, sizeof local) < 0)
        return die("bind");
    static unsigned char buf[VXLAN_HLEN + 65536];
    const unsigned char hdr[VXLAN_HLEN] = {
        0x08, 0, 0, 0, (unsigned char)(vni >> 16), (unsigned char)(vni >> 8), (unsigned char)vni, 0};
    fprintf(stderr, "cfwd ready\n");
    struct pollfd fds[2] = {{.fd = tap, .events = POLLIN}, {.fd = udp, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, spin ? 0 : -1) < 0 && errno != EINTR)
            return die("poll");
        ssize_t n;
        while ((n = read(tap, buf + VXLAN_HLEN, sizeof buf - VXLAN_HLEN)) > 0) {
            memcpy(buf, hdr, VXLAN_HLEN);
            (void)sendto(udp, buf, (size_t)n + VXLAN_HLEN, 0, (struct sockaddr *)&remote,
                         sizeof remote);
        }
        if (n < 0 && errno != EAGAIN)
            return die("read TAP");
        while ((n = recv(udp, buf, sizeof buf, 0)) >= 0) {
            if (n > VXLAN_HLEN && (buf[0] & 0x08) && memcmp(buf + 4, hdr + 4, 3) == 0)
                (void)write(tap, buf + VXLAN_HLEN, (size_t)n - VXLAN_HLEN);
        }
    }
}
