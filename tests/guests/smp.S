/*
 * SMP: the boot vCPU starts the others with INIT-SIPI-SIPI through its local APIC, as Linux
 * does. Each application processor runs a real-mode trampoline that records its APIC ID and
 * counts itself in. The boot vCPU reports how many came online.
 */
    .include "macros.S"
    .globl _start
    .text
_start:
    lea tramp_start(%rip), %rsi
    mov $0x10000, %edi
    mov $(tramp_end - tramp_start), %ecx
    rep movsb
    movl $0, 0x11000

    mov $1, %eax
    cpuid
    shr $16, %ebx
    and $0xff, %ebx
    mov %ebx, %r12d              /* vCPUs in the package */

    mov $0xfee00000, %edi        /* local APIC */
    movl $0, 0x310(%rdi)
    movl $0x000c4500, 0x300(%rdi) /* INIT, all excluding self */
    call delay
    movl $0x000c4610, 0x300(%rdi) /* SIPI, vector 0x10 -> 0x10000 */
    call delay
    movl $0x000c4610, 0x300(%rdi)

    lea -1(%r12), %edx
    mov $300000, %ecx
1:  mov 0x11000, %eax
    cmp %edx, %eax
    jae 2f
    pause
    dec %ecx
    jnz 1b
2:  PUTS "smp: online "
    mov 0x11000, %eax
    inc %eax
    call put_dec
    PUTS " of "
    mov %r12d, %eax
    call put_dec
    PUTS " apic-ids"
    mov $1, %ebx
3:  cmp %r12d, %ebx
    jae 4f
    cmpb $1, 0x11010(%rbx)
    jne 5f
    PUTS " "
    mov %ebx, %eax
    call put_dec
5:  inc %ebx
    jmp 3b
4:  PUTS "\n"
    call poweroff

delay:
    push %rcx
    mov $2000, %ecx
1:  dec %ecx
    jnz 1b
    pop %rcx
    ret

    .code16
tramp_start:
    mov %cs, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx
    movb $1, 0x1010(%bx)
    lock incl 0x1000
1:  cli
    hlt
    jmp 1b
tramp_end:
    .code64

    .include "lib.S"
