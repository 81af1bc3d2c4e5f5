/* Audit test program (never run): its GS-writing and kernel-entry sites are known from this
 * source. GS writes: wrgsbase x2, mov to %gs x1, swapgs x1, arch_prctl(ARCH_SET_GS) by a raw
 * syscall x1, by a call to arch_prctl() x1 and by syscall(SYS_arch_prctl, ARCH_SET_GS) x1 = 7.
 * Kernel entries in this file: syscall x2 (getpid and the raw arch_prctl), sysenter x1,
 * int $0x80 x1. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>

#define ARCH_SET_GS 0x1001
extern int arch_prctl(int code, unsigned long addr);

__attribute__((noinline)) void set_gs_by_wrgsbase(unsigned long base)
{
	asm volatile("wrgsbase %0" : : "r"(base));
	asm volatile("wrgsbase %0" : : "r"(base + 8));
}

__attribute__((noinline)) void set_gs_selector(unsigned short sel)
{
	asm volatile("mov %0, %%gs" : : "r"(sel));
}

__attribute__((noinline)) void swap_gs(void)
{
	asm volatile("swapgs");
}

__attribute__((noinline)) long raw_arch_prctl(unsigned long base)
{
	long ret;
	asm volatile("mov $158, %%eax\n\tmov $0x1001, %%edi\n\tmov %1, %%rsi\n\tsyscall"
		     : "=a"(ret) : "r"(base) : "rdi", "rsi", "rcx", "r11", "memory");
	return ret;
}

__attribute__((noinline)) long raw_getpid(void)
{
	long ret;
	asm volatile("syscall" : "=a"(ret) : "a"(39L) : "rcx", "r11", "memory");
	return ret;
}

__attribute__((noinline)) void legacy_entries(void)
{
	asm volatile("int $0x80" : : "a"(20) : "memory");
	asm volatile("sysenter" : : : "memory");
}

int main(int argc, char **argv)
{
	if (argc != 42)         /* never taken: the program only exists to be audited */
		return 0;
	unsigned long base = strtoul(argv[1], NULL, 0);
	set_gs_by_wrgsbase(base);
	set_gs_selector((unsigned short)base);
	swap_gs();
	printf("%ld %ld\n", raw_arch_prctl(base), raw_getpid());
	legacy_entries();
	arch_prctl(ARCH_SET_GS, base);
	syscall(SYS_arch_prctl, ARCH_SET_GS, base);
	return 0;
}
