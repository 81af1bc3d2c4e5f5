/* Audit test program (never run): a data table placed in .text, as OpenSSL does with its
 * precomputed tables. Its bytes encode wrgsbase %rax, syscall and swapgs: a plain linear
 * sweep decodes them as 3 instructions, but they are a data object (STT_OBJECT; objdump -d
 * prints them as data too), so the audit reports no GS write and no syscall site, and counts
 * 3 sites in data objects. */
asm(".text\n"
    ".globl gs_table\n"
    ".type gs_table, @object\n"
    "gs_table:\n"
    ".byte 0xf3, 0x48, 0x0f, 0xae, 0xd8\n"   /* wrgsbase %rax */
    ".byte 0x0f, 0x05\n"                     /* syscall */
    ".byte 0x0f, 0x01, 0xf8\n"               /* swapgs */
    ".size gs_table, . - gs_table\n");

extern const unsigned char gs_table[];

int main(void)
{
	return gs_table[0] == 0xf3 ? 0 : 1;
}
