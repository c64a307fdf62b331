// SPDX-License-Identifier: GPL-2.0
/*
 * nn-devwrite — one write() to /dev/neural_network of which only the start
 * is readable: what a shell cannot do. Built statically on the host by
 * tests/guest/run-guest-test.py and run in the guest by guest-test.sh.
 *
 *   nn-devwrite LEN WORD...
 *
 * writes LEN bytes whose first 4 * (number of WORDs) bytes are the WORDs (as
 * little-endian 32-bit integers, e.g. a request header) and whose other bytes
 * lie in pages mapped PROT_NONE: a driver that copies the whole write before
 * it checks the header fails with EFAULT, one that checks the header first
 * refuses a bad one with its own error. Prints "ok N" (N bytes written) or
 * "nn-devwrite: <strerror>" and exits 1 on error.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t len, head, head_pages, body_pages;
	unsigned char *base, *buf;
	ssize_t n;
	int fd, i;

	if (argc < 3) {
		fprintf(stderr, "usage: nn-devwrite LEN WORD...\n");
		return 2;
	}
	len = strtoull(argv[1], NULL, 0);
	head = 4 * (size_t)(argc - 2);
	if (head > len) {
		fprintf(stderr, "nn-devwrite: more words than LEN bytes\n");
		return 2;
	}
	head_pages = (head + page - 1) / page;
	body_pages = (len - head + page - 1) / page;
	base = mmap(NULL, (head_pages + body_pages) * page, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED ||
	    (head_pages && mprotect(base, head_pages * page,
				    PROT_READ | PROT_WRITE))) {
		perror("nn-devwrite: mmap");
		return 2;
	}
	/* The words end where the unreadable pages begin. */
	buf = base + head_pages * page - head;
	for (i = 2; i < argc; i++) {
		uint32_t w = (uint32_t)strtoll(argv[i], NULL, 0);
		unsigned char *p = buf + 4 * (i - 2);

		p[0] = w;
		p[1] = w >> 8;
		p[2] = w >> 16;
		p[3] = w >> 24;
	}
	fd = open("/dev/neural_network", O_RDWR);
	if (fd < 0) {
		perror("nn-devwrite: open");
		return 1;
	}
	n = write(fd, buf, len);
	if (n < 0) {
		fprintf(stderr, "nn-devwrite: %s\n", strerror(errno));
		return 1;
	}
	printf("ok %zd\n", n);
	return 0;
}
