// dfmod: make a mainline kernel double-fault on purpose, two ways.
//  mode=overflow: recurse until the task's vmapped stack hits its guard page
//  mode=kml:      run at CPL 0 on a user-range stack that is not mapped and push on it,
//                 as a Kernel Mode Linux process would (the #PF frame cannot be pushed)
#include <linux/module.h>
#include <linux/kernel.h>

static char *mode = "kml";
module_param(mode, charp, 0);

static noinline int recurse(int n)
{
	volatile char buf[512];

	buf[0] = n;
	if (n <= 0)
		return buf[0];
	return recurse(n - 1) + buf[1];
}

static noinline void kml_push(void)
{
	unsigned long saved;

	asm volatile("mov %%rsp, %0\n\t"
		     "mov $0x40001000, %%rsp\n\t"
		     "push %%rax\n\t"
		     "mov %0, %%rsp" : "=&r"(saved) : : "memory");
}

static int __init dfmod_init(void)
{
	pr_info("dfmod: mode=%s\n", mode);
	if (!strcmp(mode, "overflow"))
		return recurse(1 << 20) ? 0 : 0;
	kml_push();
	return 0;
}

static void __exit dfmod_exit(void) {}
module_init(dfmod_init);
module_exit(dfmod_exit);
MODULE_LICENSE("GPL");
