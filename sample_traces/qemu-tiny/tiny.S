/* tiny.S: a freestanding multiboot kernel that enters long mode and, at CPL 0,
 * pushes onto a stack whose page below is unmapped (KML's stack starvation).
 * SCENARIO selects the #DF gate: 0 = no IST (triple fault), 1 = IST1 (#DF handled),
 * 2 = no fault at all (prints and exits through isa-debug-exit),
 * 3 = #PF on IST1 whose handler returns without a fix: the push faults forever. */
#ifndef SCENARIO
#define SCENARIO 0
#endif
#define STACK_TOP 0x40001000          /* first byte above a 4 KiB page that is unmapped */
    .section .text
    .code32
    .globl _start
    .align 4
mb_header:
    .long 0x1BADB002
    .long 0
    .long -(0x1BADB002)
_start:
    cli
    mov $boot_stack_top, %esp
    /* page tables: PML4[0] -> PDPT, PDPT[0] -> PD, PD: 512 x 2 MiB identity (0..1 GiB) */
    mov $pdpt, %eax ; or $3, %eax ; mov %eax, pml4
    mov $pd, %eax ; or $3, %eax ; mov %eax, pdpt
    xor %ecx, %ecx
1:  mov %ecx, %eax ; shl $21, %eax ; or $0x83, %eax
    mov %eax, pd(,%ecx,8)
    inc %ecx ; cmp $512, %ecx ; jne 1b
    mov $pml4, %eax ; mov %eax, %cr3
    mov %cr4, %eax ; or $0x20, %eax ; mov %eax, %cr4          /* PAE */
    mov $0xC0000080, %ecx ; rdmsr ; or $0x100, %eax ; wrmsr    /* EFER.LME */
    mov %cr0, %eax ; or $0x80000001, %eax ; mov %eax, %cr0    /* PG|PE */
    lgdt gdt_ptr
    ljmp $0x08, $long_mode
    .code64
long_mode:
    mov $0x10, %ax ; mov %ax, %ds ; mov %ax, %es ; mov %ax, %ss
    /* TSS descriptor base */
    lea tss(%rip), %rax
    mov %ax, gdt_tss+2(%rip)
    shr $16, %rax ; mov %al, gdt_tss+4(%rip) ; mov %ah, gdt_tss+7(%rip)
    shr $16, %rax ; mov %eax, gdt_tss+8(%rip)
    lea ist1_top(%rip), %rax ; mov %rax, tss+0x24(%rip)       /* TSS.IST1 */
    mov $0x18, %ax ; ltr %ax
    /* IDT: #PF (14) -> pf_handler, IST 0; #DF (8) -> df_handler, IST per SCENARIO */
#if SCENARIO == 3
    lea pf_retry(%rip), %rdi ; mov $14, %esi ; mov $1, %edx ; call set_gate
#else
    lea pf_handler(%rip), %rdi ; mov $14, %esi ; xor %edx, %edx ; call set_gate
#endif
    lea df_handler(%rip), %rdi ; mov $8, %esi
#if SCENARIO == 1
    mov $1, %edx
#else
    xor %edx, %edx
#endif
    call set_gate
    lidt idt_ptr(%rip)
    lea msg_start(%rip), %rsi ; call puts
#if SCENARIO == 2
    lea msg_clean(%rip), %rsi ; call puts
    jmp exit_qemu
#endif
    /* the kernel-mode "process": CPL 0, RSP at the top of an unmapped page's upper neighbour */
    mov $STACK_TOP, %rsp
    mov $0x1234, %rax
starve:
    push %rax                     /* writes STACK_TOP-8: #PF, whose frame cannot be pushed */
    hlt
#if SCENARIO == 3
pf_retry:                         /* return without fixing anything: a fault loop */
    add $8, %rsp
    iretq
#endif
pf_handler:
    lea msg_pf(%rip), %rsi ; call puts
    jmp exit_qemu
df_handler:
    lea msg_df(%rip), %rsi ; call puts
exit_qemu:
    mov $0xf4, %dx ; mov $0x31, %al ; out %al, %dx           /* isa-debug-exit */
2:  hlt ; jmp 2b
/* set_gate(handler=%rdi, vector=%esi, ist=%edx): 64-bit interrupt gate, DPL 0 */
set_gate:
    lea idt(%rip), %r8 ; shl $4, %esi ; add %rsi, %r8
    mov %di, (%r8)
    movw $0x08, 2(%r8)
    mov %dl, 4(%r8)
    movb $0x8E, 5(%r8)
    mov %rdi, %rax ; shr $16, %rax ; mov %ax, 6(%r8)
    shr $16, %rax ; mov %eax, 8(%r8)
    movl $0, 12(%r8)
    ret
puts:
    mov $0x3f8, %dx
3:  lodsb ; test %al, %al ; jz 4f ; out %al, %dx ; jmp 3b
4:  ret
    .section .data
    .align 16
gdt:
    .quad 0
    .quad 0x00209A0000000000      /* 0x08 code64 */
    .quad 0x0000920000000000      /* 0x10 data */
gdt_tss:
    .quad 0x0000890000000067      /* 0x18 TSS (base filled in) */
    .quad 0
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
    .align 16
idt_ptr:
    .word 256*16 - 1
    .quad idt
msg_start: .asciz "tiny: long mode, starving the stack at CPL 0\n"
msg_clean: .asciz "tiny: clean run, no fault\n"
msg_pf:    .asciz "tiny: #PF handled\n"
msg_df:    .asciz "tiny: #DF handled on IST1\n"
    .section .bss
    .align 4096
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4096
idt:  .skip 4096
tss:  .skip 0x68
    .align 16
      .skip 4096
ist1_top:
      .skip 1024
boot_stack_top:
