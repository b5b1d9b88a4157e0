/*
 * Ends the VM the way the first byte of the kernel command line says:
 *   p  ACPI poweroff          r  ACPI reset register      k  i8042 CPU reset (0xFE to 0x64)
 *   t  triple fault           h  halt forever (interrupts off)
 *   e  an instruction KVM-PVM's emulator cannot run (cmpxchg16b), then poweroff
 */
    .include "macros.S"
    .globl _start
    .text
_start:
    PUTS "power: "
    movzbl 0x20000, %eax
    cmp $'r', %al
    je acpi_reset
    cmp $'k', %al
    je kbd_reset
    cmp $'t', %al
    je triple_fault
    cmp $'h', %al
    je halt
    cmp $'e', %al
    je unemulated
    PUTS "poweroff\n"
    call poweroff
acpi_reset:
    PUTS "acpi reset\n"
    mov $0x602, %dx
    mov $1, %al
    outb %al, %dx
    jmp halt_forever
kbd_reset:
    PUTS "i8042 reset\n"
    mov $0x64, %dx
    mov $0xfe, %al
    outb %al, %dx
    jmp halt_forever
triple_fault:
    PUTS "triple fault\n"
    lidt null_idt(%rip)
    ud2
halt:
    PUTS "halting\n"
    cli
    jmp halt_forever

unemulated:
    PUTS "cmpxchg16b\n"
    xor %eax, %eax
    xor %edx, %edx
    xor %ebx, %ebx
    xor %ecx, %ecx
    lea scratch16(%rip), %rdi
    lock cmpxchg16b (%rdi)
    PUTS "power: survived cmpxchg16b\n"
    call poweroff

    .balign 16
scratch16:
    .quad 0, 0

null_idt:
    .word 0
    .quad 0

    .include "lib.S"
