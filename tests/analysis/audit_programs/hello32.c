/* Audit test program: a plain 32-bit program (built with gcc -m32; never run). */
#include <stdio.h>

int main(void)
{
	puts("hello from 32 bits");
	return 0;
}
