/* sysprobe: make raw system calls through each x86 entry and print what the kernel (or the
 * seccomp filter in front of it) answered. Built static by the tests, run inside a container.
 *
 *   sysprobe ABI NR [ARG0]   ABI is 64 (syscall), x32 (syscall with __X32_SYSCALL_BIT) or
 *                            32 (int 0x80, the i386 entry); prints "ok RET" or "errno N".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long sys64(long nr, long a0)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a0), "S"(0L), "d"(0L)
			 : "rcx", "r11", "memory");
	return ret;
}

static long sys32(long nr, long a0)
{
	int ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a0), "c"(0), "d"(0) : "memory");
	return ret;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: sysprobe 64|x32|32 NR [ARG0]\n");
		return 2;
	}
	long nr = strtol(argv[2], NULL, 0);
	long a0 = argc > 3 ? strtol(argv[3], NULL, 0) : 0;
	long ret;
	if (strcmp(argv[1], "64") == 0)
		ret = sys64(nr, a0);
	else if (strcmp(argv[1], "x32") == 0)
		ret = sys64(nr | 0x40000000L, a0);
	else
		ret = sys32(nr, a0);
	if (ret < 0 && ret > -4096)
		printf("errno %ld\n", -ret);
	else
		printf("ok %ld\n", ret);
	return 0;
}
