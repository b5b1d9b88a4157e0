/* MMIO exits: writes and reads in the 32-bit device hole, where no device lives. */
    .include "macros.S"
    .globl _start
    .text
_start:
    mov $0xd0000000, %edi
    mov $10, %ecx
1:  movl $0xdeadbeef, (%rdi)
    mov (%rdi), %eax
    dec %ecx
    jnz 1b
    PUTS "mmio: read "
    call put_hex
    PUTS "\n"
    call poweroff

    .include "lib.S"
